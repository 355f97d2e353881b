"""`tx-suite classify` on real MNIST digits saved as PNG, and its one-line errors on bad files."""

import json

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from test_vision_helpers import mnist, tiny_task, trainer
from tx_suite.cli.classify import main
from tx_suite.tasks.classification import load_classifier


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny ViT trained a few steps on MNIST, its checkpoint, and PNGs of the first test digits."""
    tmp = tmp_path_factory.mktemp("classify")
    pl.seed_everything(0, verbose=False)
    task, dm = tiny_task("timm", lr=3e-3), mnist(limit_train=64 * 20)
    tr = trainer(tmp, steps=20)
    tr.fit(task, dm)
    ckpt = tmp / "model.ckpt"
    tr.save_checkpoint(ckpt)
    dm.setup("test")
    pngs = []
    for i in range(3):
        path = tmp / f"digit{i}.png"
        Image.fromarray(dm.test_set.data[i].numpy(), mode="L").save(path)
        pngs.append(path)
    x = torch.stack([dm.test_set[i][0] for i in range(3)])  # the datamodule's own preprocessing
    return {"tmp": tmp, "ckpt": ckpt, "pngs": pngs, "x": x}


def _classify(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_checkpoint_round_trip_keeps_data_metadata(run):
    model = load_classifier(run["ckpt"])
    assert model.meta["classes"] == [str(d) for d in range(10)]
    assert (model.meta["in_chans"], model.meta["img_size"]) == (1, 28)
    assert model.meta["mean"] == pytest.approx([0.1307])


def test_png_digits_get_the_same_probabilities_as_the_datamodule(run, capsys):
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], "--topk", "10", "--json", *run["pngs"])
    assert code == 0 and err == ""
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(run["pngs"])  # one row per file, or the checks below check nothing
    model = load_classifier(run["ckpt"])
    with torch.no_grad():
        probs = model(run["x"]).softmax(-1)
    for row, p, path in zip(rows, probs, run["pngs"]):
        assert row["file"] == str(path)
        got = {int(t["label"]): t["prob"] for t in row["top"]}
        assert len(got) == 10 and sum(got.values()) == pytest.approx(1.0, abs=1e-4)
        for label in range(10):
            assert got[label] == pytest.approx(p[label].item(), abs=1e-5)
        assert row["top"][0]["label"] == str(p.argmax().item())


def test_text_output_topk(run, capsys):
    code, out, _ = _classify(capsys, "--ckpt", run["ckpt"], "--topk", "2", run["pngs"][0])
    assert code == 0
    line = out.strip()
    assert line.startswith(f"{run['pngs'][0]}: ") and line.count("(") == 2


def test_wrong_size_is_resized_with_a_note_or_refused(run, capsys):
    big = run["tmp"] / "big.png"
    Image.open(run["pngs"][0]).resize((56, 56)).save(big)
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], big)
    assert code == 0 and "resized 56x56 -> 28x28" in err and out.startswith(str(big))
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], "--no-resize", big)
    assert code == 1 and out == ""
    assert err.strip() == f"tx-suite classify: error: {big}: image is 56x56, the model takes 28x28 (drop --no_resize to resize it)"



def test_a_non_square_image_is_resized_on_both_sides_or_refused(tmp_path):
    from tx_suite.cli.classify import ImageError, load_image

    for w, h in ((28, 40), (40, 28)):  # one side already the model's
        path = tmp_path / f"{w}x{h}.png"
        Image.new("L", (w, h), 128).save(path)
        img, note = load_image(path, 28, 1)
        assert img.size == (28, 28) and note == f"resized {w}x{h} -> 28x28"
        with pytest.raises(ImageError, match=f"image is {w}x{h}, the model takes 28x28"):
            load_image(path, 28, 1, resize=False)


def test_resize_matches_the_datamodules_eval_transform(run):
    """A model trained at another size than the files' (e.g. MNIST at 56) must see the same
    pixels from classify as from test/predict: the eval transform's bicubic T.Resize."""
    import numpy as np
    import torchvision.transforms as T

    from tx_suite.cli.classify import load_image

    for size in (56, 20):
        got, note = load_image(run["pngs"][0], size, 1)
        want = T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True)(Image.open(run["pngs"][0]))
        assert note and np.array_equal(np.asarray(got), np.asarray(want))

def test_channel_mismatch_is_an_error_unless_converted(run, capsys):
    rgb = run["tmp"] / "rgb.png"
    Image.open(run["pngs"][0]).convert("RGB").save(rgb)
    code, _, err = _classify(capsys, "--ckpt", run["ckpt"], rgb)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "3 channel(s) (RGB), the model takes 1 (L)" in err
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], "--convert", rgb, run["pngs"][0])
    assert code == 0 and "converted RGB -> L" in err
    a, b = (line.split(": ", 1)[1] for line in out.splitlines())
    assert a == b  # gray -> RGB -> gray is lossless

    # Alpha: an opaque one converts as the gray image; a transparent canvas (a black digit on it
    # became an all-black image) is refused.
    opaque, clear = run["tmp"] / "opaque.png", run["tmp"] / "clear.png"
    Image.open(run["pngs"][0]).convert("RGBA").save(opaque)
    digit = Image.open(run["pngs"][0]).convert("L")
    Image.merge("LA", (Image.new("L", digit.size, 0), digit)).save(clear)  # black ink, alpha = the digit
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], "--convert", opaque, run["pngs"][0])
    assert code == 0 and "converted RGBA -> L" in err
    a, b = (line.split(": ", 1)[1] for line in out.splitlines())
    assert a == b
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], "--convert", clear)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "has transparent pixels" in err, err

    palette = run["tmp"] / "palette_gray.png"  # gray pixels stored as a palette image (mode P)
    Image.open(run["pngs"][0]).convert("P").save(palette)
    assert Image.open(palette).mode == "P"
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], palette, run["pngs"][0])
    assert code == 0 and err == ""  # taken as gray: no channel error, no conversion note
    a, b = (line.split(": ", 1)[1] for line in out.splitlines())
    assert a == b
    colour = run["tmp"] / "palette_colour.png"
    Image.new("RGB", (28, 28), (200, 0, 0)).convert("P", palette=Image.ADAPTIVE).save(colour)
    code, _, err = _classify(capsys, "--ckpt", run["ckpt"], colour)
    assert code == 1 and "3 channel(s) (RGB)" in err  # a coloured palette is still colour
    # for an RGB model a gray palette is RGB, not a "1 channel" image that needs --convert
    from tx_suite.cli.classify import load_image

    img, note = load_image(palette, img_size=28, in_chans=3)
    assert img.mode == "RGB" and note is None


def test_bad_files_get_one_line_errors_and_good_ones_still_run(run, capsys):
    text = run["tmp"] / "notes.png"
    text.write_text("not a picture")
    cut = run["tmp"] / "cut.png"
    cut.write_bytes(run["pngs"][1].read_bytes()[:80])
    missing = run["tmp"] / "missing.png"
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], text, missing, cut, run["pngs"][0])
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert lines[0] == f"tx-suite classify: error: {text}: not an image file PIL can read"
    assert lines[1] == f"tx-suite classify: error: {missing}: no such file"
    assert lines[2].startswith(f"tx-suite classify: error: {cut}: cannot decode image")
    assert out.startswith(str(run["pngs"][0]))  # the readable image is still classified


def test_a_decompression_bomb_is_one_line_and_the_others_still_run(run, capsys, monkeypatch):
    """PIL refuses an image of over 2 * MAX_IMAGE_PIXELS (DecompressionBombError, not an OSError);
    the limit is lowered here so that a 64x64 image is one."""
    import PIL.Image

    big = run["tmp"] / "bomb.png"
    Image.new("L", (64, 64)).save(big)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], big, run["pngs"][0])
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tx-suite classify: error: {big}: image too large (")
    assert out.startswith(str(run["pngs"][0]))


def test_bad_checkpoint_is_one_line(run, capsys):
    code, _, err = _classify(capsys, "--ckpt", run["ckpt"], "--device", "gpu7", run["pngs"][0])
    assert code == 2 and "is not a torch device" in err
    code, out, err = _classify(capsys, "--ckpt", run["pngs"][0], run["pngs"][0])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"tx-suite classify: error: not a valid checkpoint (corrupt or not written by torch.save): {run['pngs'][0]}")
    code, _, err = _classify(capsys, "--ckpt", run["tmp"] / "nope.ckpt", run["pngs"][0])
    assert code == 2 and "checkpoint not found" in err


def test_checkpoint_written_by_lightning_cli_loads(run, tmp_path):
    """LightningCLI stores _class_path / _instantiator next to the task's arguments."""
    ckpt = torch.load(run["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "tx_suite.tasks.classification.ImageClassification"
    ckpt["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    torch.save(ckpt, tmp_path / "cli.ckpt")
    assert load_classifier(tmp_path / "cli.ckpt").meta["img_size"] == 28
    ckpt["hyper_parameters"]["_class_path"] = "tx_suite.tasks.translation.TranslationTask"
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="is a TranslationTask checkpoint, not an image classifier"):
        load_classifier(tmp_path / "other.ckpt")


def test_weights_that_do_not_fit_the_stored_hyper_parameters_name_the_tensor(run, tmp_path, capsys):
    """torch's load_state_dict error starts with a header line that names no tensor."""
    ckpt = torch.load(run["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["d_model"] *= 2
    torch.save(ckpt, tmp_path / "wider.ckpt")
    with pytest.raises(ValueError, match=r"not an image-classification checkpoint: size mismatch for model\."):
        load_classifier(tmp_path / "wider.ckpt")
    code, out, err = _classify(capsys, "--ckpt", tmp_path / "wider.ckpt", run["pngs"][0])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "size mismatch for model." in err


def test_a_gpu_attention_kernel_of_the_training_run_is_not_kept(run, capsys, tmp_path, monkeypatch):
    """A checkpoint trained with sdpa_backend: efficient (GPU only) and compile classifies on CPU."""
    ckpt = torch.load(run["ckpt"], weights_only=True)
    ckpt["hyper_parameters"].update(sdpa_backend="efficient", compile=True)
    torch.save(ckpt, tmp_path / "gpu.ckpt")
    code, out, err = _classify(capsys, "--ckpt", tmp_path / "gpu.ckpt", run["pngs"][0])
    assert code == 0 and err == "" and out.startswith(str(run["pngs"][0]))
    model = load_classifier(tmp_path / "gpu.ckpt")
    assert (model.hparams.sdpa_backend, model.hparams.compile) == (None, False)
    # Loaded as it is (Lightning's load_from_checkpoint, `tx-suite test`), the kernel is not pinned
    # on the CPU: the same logits, one warning.
    from tx_suite.tasks.classification import ImageClassification

    monkeypatch.setattr("tx_suite.tasks.sdpa_backend._warned", set(), raising=False)
    as_saved = ImageClassification.load_from_checkpoint(tmp_path / "gpu.ckpt", weights_only=True).eval()
    x = torch.randn(2, 1, 28, 28)
    with pytest.warns(UserWarning, match="no cpu kernel"), torch.no_grad():
        torch.testing.assert_close(as_saved(x), model.eval()(x))


def test_experiment_best_names_the_newest_run(run, capsys, tmp_path):
    import shutil

    root = tmp_path / "runs"
    (root / "mnist_vit" / "r1" / "checkpoints").mkdir(parents=True)
    shutil.copy(run["ckpt"], root / "mnist_vit" / "r1" / "checkpoints" / "best.ckpt")
    by_file = _classify(capsys, "--ckpt", run["ckpt"], "--json", run["pngs"][0])
    by_name = _classify(capsys, "--ckpt", "mnist_vit:best", "--runs_dir", root, "--json", run["pngs"][0])
    assert by_name == by_file and by_name[0] == 0
    assert json.loads(by_name[1])["file"] == str(run["pngs"][0])  # a row, not two empty outputs
    code, _, err = _classify(capsys, "--ckpt", "mnist_vit:last", "--runs_dir", root, run["pngs"][0])
    assert code == 2 and "no " in err and "mnist_vit/*/checkpoints/last.ckpt" in err and "mnist_vit:best only" in err
    code, _, err = _classify(capsys, "--ckpt", "mnist_vit_timm:best", "--runs_dir", root, run["pngs"][0])
    assert code == 2 and "experiments/vision/mnist_vit_timm.yaml" in err  # never trained: how to train it


def test_a_directory_means_its_image_files(run, capsys, tmp_path):
    import shutil

    folder = tmp_path / "digits"
    folder.mkdir()
    names = ["0.png", "1.PNG", "2.png"]  # camera and Windows tools write upper-case suffixes
    for i, png in enumerate(run["pngs"][:3]):
        shutil.copy(png, folder / names[2 - i])
    (folder / "notes.txt").write_text("not an image")
    code, out, _ = _classify(capsys, "--ckpt", run["ckpt"], "--topk", "1", folder)
    assert code == 0 and [line.split(":")[0] for line in out.splitlines()] == [str(folder / n) for n in names]
    (tmp_path / "empty").mkdir()
    code, _, err = _classify(capsys, "--ckpt", run["ckpt"], tmp_path / "empty")
    assert code == 1 and "a directory without image files" in err
    # a dangling link in the directory is an error line of its own (it was skipped, exit 0)
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code, out, err = _classify(capsys, "--ckpt", run["ckpt"], "--topk", "1", folder)
    assert code == 1 and len(out.splitlines()) == 3 and f"{folder / 'gone.png'}: no such file" in err


def test_an_exif_orientation_is_applied_as_viewers_show_the_image(run, capsys, tmp_path):
    # a phone JPEG: pixels stored sideways, EXIF orientation 6 ("rotate 90 clockwise to show")
    upright = Image.open(run["pngs"][0])
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.png", exif=exif)
    upright.save(tmp_path / "upright.png")
    code, out, _ = _classify(capsys, "--ckpt", run["ckpt"], "--json", tmp_path / "upright.png", tmp_path / "phone.png")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2 and rows[0]["top"] == rows[1]["top"], rows


def test_batched_classification_equals_one_batch(run):
    from tx_suite.cli.classify import classify, load_image

    model = load_classifier(run["ckpt"])
    meta = model.meta
    imgs = [load_image(p, meta["img_size"], meta["in_chans"], True, False)[0] for p in run["pngs"]]
    assert len(imgs) >= 3
    one, batched = classify(model, imgs, 3), classify(model, imgs, 3, batch_size=2)
    assert [[c for c, _ in t] for t in one] == [[c for c, _ in t] for t in batched]
    assert max(abs(p - q) for a, b in zip(one, batched) for (_, p), (_, q) in zip(a, b)) < 1e-5
