"""benchmarks/vision_ensemble.py on real MNIST: member and ensemble test accuracies, error overlap."""

import json
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from test_vision_helpers import mnist, tiny_task, trainer
from tx_suite.tasks.classification import load_classifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vision_ensemble  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny ViTs trained 30 steps on MNIST from different seeds (different mistakes)."""
    tmp = tmp_path_factory.mktemp("ensemble")
    paths = []
    for seed in (0, 1):
        pl.seed_everything(seed, verbose=False)
        task, dm = tiny_task("tx", lr=3e-3, ema_decay=0.9), mnist(limit_train=64 * 30)
        tr = trainer(tmp, steps=30)
        tr.fit(task, dm)
        paths.append(tmp / f"seed{seed}.ckpt")
        tr.save_checkpoint(paths[-1])
    return paths


def _direct(paths):
    """Test probabilities of each checkpoint, computed here without the script."""
    dm = mnist(batch_size=500)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    out = []
    for path in paths:
        model = load_classifier(path).eval()
        with torch.no_grad():
            out.append(torch.cat([model(x).softmax(-1) for x, _ in batches]))
    return out, torch.cat([y for _, y in batches])


def test_members_and_ensemble_against_a_direct_computation(ckpts, tmp_path, capsys):
    out = tmp_path / "ens.json"
    assert vision_ensemble.main([*(a for p in ckpts for a in ("--ckpt", str(p))), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (pa, pb), y = _direct(ckpts)
    assert result["test_images"] == len(y) == 10_000
    accs = [(p.argmax(-1) == y).float().mean().item() for p in (pa, pb)]
    assert [m["test_acc"] for m in result["members"]] == pytest.approx(accs)
    assert 0.15 < min(accs) and accs[0] != accs[1]  # trained, and not the same model twice
    assert result["ensemble_test_acc"] == pytest.approx(((pa + pb).argmax(-1) == y).float().mean().item())
    assert "ensemble of 2" in capsys.readouterr().out
    wrong = (pa.argmax(-1) != y).long() + (pb.argmax(-1) != y).long()
    assert result["wrong_by_members"] == [(wrong == k).sum().item() for k in range(3)]
    assert result["wrong_by_members"][2] > 0 and sum(result["wrong_by_members"]) == 10_000
    assert result["wrong_by_all"] == torch.nonzero(wrong == 2).flatten().tolist()


def test_a_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        vision_ensemble.main(["--ckpt", str(tmp_path / "nope.ckpt")])
    assert e.value.code == 2 and "no file at" in capsys.readouterr().err


def test_a_checkpoint_of_other_data_is_a_usage_error(tmp_path, capsys):
    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", img_size=32, in_chans=3, patch_size=8)  # a CIFAR-shaped model, MNIST data
    ckpt = tmp_path / "rgb.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpt)
    with pytest.raises(SystemExit) as e:
        vision_ensemble.main(["--ckpt", str(ckpt)])
    assert e.value.code == 2 and "classifies 10 classes of 3x32x32 images" in capsys.readouterr().err


def test_a_bad_member_or_out_dir_stops_before_any_evaluation(ckpts, tmp_path, capsys, monkeypatch):
    """A corrupt second member was found only after the first had been evaluated on the whole
    test set (a traceback), and a missing --out directory after all of them (the table lost)."""
    evaluated = []
    monkeypatch.setattr(vision_ensemble, "predict_probabilities", lambda *a: evaluated.append(1) or 1 / 0)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    for args, says in ((["--ckpt", str(ckpts[0]), "--ckpt", str(bad)], f"--ckpt {bad}: "),
                       (["--ckpt", str(ckpts[0]), "--out", str(tmp_path / "nodir" / "r.json")], "--out: no directory")):
        with pytest.raises(SystemExit) as e:
            vision_ensemble.main(args)
        assert e.value.code == 2 and says in capsys.readouterr().err
    assert not evaluated
