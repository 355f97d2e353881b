"""VQ-VAE tokenizer: image -> codes -> image shapes, training on real scenes, checkpoint loading."""

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from tx_suite.data.captioned_mnist import CaptionedMNIST
from tx_suite.models.vqvae import VQVAE
from tx_suite.tasks.vqvae import VQVAETask, codebook_fingerprint, load_vqvae


@pytest.fixture(scope="module")
def scenes():
    ds = CaptionedMNIST(split="train", size=512, seed=0)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


@pytest.mark.parametrize("downsample, grid", [(4, 8), (2, 16)])
def test_round_trip_shapes(scenes, downsample, grid):
    model = VQVAE(hidden=32, res_channels=16, n_res_blocks=1, downsample=downsample,
                  codebook_size=64, codebook_dim=16).eval()
    x = scenes[:4]
    codes = model.encode(x)
    assert codes.shape == (4, grid, grid) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 64 and model.grid_size(32) == grid
    images = model.decode(codes)
    assert images.shape == x.shape and 0 <= images.min() and images.max() <= 1
    # decode(encode(x)) is the forward pass's reconstruction (same codes, same decoder).
    assert torch.allclose(images, model(x).recon.clamp(0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="codes must lie"):
        model.decode(codes + 64)


def test_a_few_steps_on_real_scenes_lower_the_loss(scenes):
    torch.manual_seed(0)
    model = VQVAE(hidden=32, res_channels=16, n_res_blocks=1, codebook_size=64, codebook_dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    held = scenes[-64:]

    def val_loss():
        model.eval()
        with torch.no_grad():
            loss = F.mse_loss(model(held).recon, held).item()
        model.train()
        return loss

    model(scenes[:64])  # k-means initialisation of the codebook from real encodings
    before = val_loss()
    for step in range(40):
        batch = scenes[(step * 32) % 448:(step * 32) % 448 + 32]
        out = model(batch)
        loss = F.mse_loss(out.recon, batch) + out.commit_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = val_loss()
    assert after < 0.7 * before, (before, after)


def test_checkpoint_loads_by_path_with_clear_errors(tmp_path, scenes):
    task = VQVAETask(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8,
                     log_images=0)
    task.model(scenes[:64])  # initialise the codebook
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(task)
    path = tmp_path / "vqvae.ckpt"
    trainer.save_checkpoint(path)
    model = load_vqvae(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert codebook_fingerprint(model) == codebook_fingerprint(task.model)
    task.model.eval()
    assert torch.equal(model.encode(scenes[:8]), task.model.encode(scenes[:8]))

    with pytest.raises(FileNotFoundError, match="VQ-VAE checkpoint not found"):
        load_vqvae(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read VQ-VAE checkpoint"):
        load_vqvae(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"width": 16}}, tmp_path / "judge.ckpt")
    with pytest.raises(ValueError, match="not a VQ-VAE checkpoint"):
        load_vqvae(tmp_path / "judge.ckpt")


def test_fit_logs_reconstructions_and_codebook_usage_to_wandb(tmp_path, monkeypatch):
    """The default logger is W&B: the image callback's uncaptioned plot once crashed it (Lightning's
    ``WandbLogger.log_image`` rejects ``caption=None``). W&B itself is disabled in tests (another
    test's run may have fixed its mode for the process), so what reached the logger is recorded."""
    from pytorch_lightning.loggers import WandbLogger

    from tx_suite.data.captioned_mnist_datamodule import CaptionedMNISTDataModule

    logged: dict = {}
    log_metrics = WandbLogger.log_metrics
    monkeypatch.setattr(WandbLogger, "log_metrics",
                        lambda self, metrics, step=None: (logged.update(metrics), log_metrics(self, metrics, step))[1])
    dm = CaptionedMNISTDataModule(batch_size=16, train_size=32, val_size=16, test_size=16)
    task = VQVAETask(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8,
                     log_images=8)
    logger = WandbLogger(save_dir=str(tmp_path), project="tx-suite-test")
    trainer = pl.Trainer(max_epochs=1, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(task, dm)
    assert {"val/reconstructions", "val/code_histogram", "val/codebook_usage", "val/psnr"} <= set(logged)
    # what W&B stores: wandb.Image once cast [0, 1] float tensors to uint8, all black
    import numpy as np

    for key in ("val/reconstructions", "val/code_histogram"):
        pixels = np.asarray(logged[key][0].image)
        assert pixels.max() > 200 and pixels.min() < 50, key


def test_train_further_and_ten_step_runs(tmp_path):
    """`fit --ckpt_path last --trainer.max_steps=<more>` (docs/cli.md: "train it further") failed
    with torch's "Tried to step 13 times" (OneCycleLR restores its old length), and a 10-step run
    divided by zero (a warm-up of 0.1 * 10 - 1 = 0 steps)."""
    from tx_suite.data.captioned_mnist_datamodule import CaptionedMNISTDataModule

    def fit(max_steps, ckpt=None):
        task = VQVAETask(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8, log_images=0)
        trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
        trainer.fit(task, CaptionedMNISTDataModule(batch_size=8, train_size=160, val_size=16, test_size=16),
                    ckpt_path=ckpt, weights_only=True)
        return trainer

    trainer = fit(10)
    assert trainer.global_step == 10
    trainer.save_checkpoint(tmp_path / "ten.ckpt")
    trainer = fit(14, str(tmp_path / "ten.ckpt"))
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == 14 and sched.total_steps == 14 and sched.last_epoch == 14


def test_one_cycle_matches_torch_and_survives_any_length():
    from tx_suite.tasks.one_cycle import one_cycle

    def run(make, steps):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched, out = make(opt), []
        for _ in range(steps):
            out.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
            opt.step()
            sched.step()
        return out

    ours = run(lambda o: one_cycle(o, 1e-3, 50, pct_start=0.1), 50)
    torch_ = run(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1e-3, total_steps=50, pct_start=0.1), 50)
    assert ours == torch_  # lr and momentum cycle unchanged where torch works
    for total in range(1, 25):
        for pct in (0.1, 0.25, 0.3, 0.5):
            run(lambda o: one_cycle(o, 1e-3, total, pct_start=pct), total)


def test_usage_stats_known_values():
    usage, perplexity = VQVAETask.usage_stats(torch.tensor([5, 5, 0, 0]))
    assert usage == 0.5 and perplexity == pytest.approx(2.0)  # two codes used equally: exp(H) = 2
    assert VQVAETask.usage_stats(torch.tensor([1, 0, 0, 0])) == (0.25, pytest.approx(1.0))


def test_psnr_and_code_counts_cover_one_epoch(tmp_path):
    from tx_suite.data.captioned_mnist_datamodule import CaptionedMNISTDataModule

    torch.manual_seed(0)
    task = VQVAETask(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8, log_images=0)
    dm = CaptionedMNISTDataModule(batch_size=8, train_size=32, val_size=16, test_size=16)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(task, dm)  # the sanity check and two validation epochs: counts must not pile up
    h = w = 32 // task.hparams.downsample
    assert int(task.code_counts.sum()) == 8 * h * w  # one val batch
    assert int(task.train_code_counts.sum()) == 2 * 8 * h * w  # one epoch's 2 batches
    # PSNR of the [0, 1]-clamped reconstruction against [0, 1] images: 10 log10(1 / MSE).
    metrics = trainer.validate(task, dm, verbose=False)[0]
    dm.setup("validate")
    images = next(iter(dm.val_dataloader()))["image"]
    with torch.no_grad():
        mse = F.mse_loss(task.eval()(images).recon.clamp(0, 1), images)
    assert metrics["val/psnr"] == pytest.approx(10 * math.log10(1 / mse.item()), rel=1e-4)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_the_training_loss_is_reconstruction_plus_beta_times_the_commitment(scenes):
    """van den Oord et al. Eq. 3 without the codebook term (EMA): ``||x - D(e)||^2 + beta ||E(x) - sg[e]||^2``,
    e the nearest code of the codebook the step quantized with; beta = commitment_weight."""
    torch.manual_seed(0)
    beta = 25.0  # large: at init ||E(x) - e||^2 is ~1e-6, lost in the rounding of the reconstruction term
    task = VQVAETask(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8,
                     commitment_weight=beta, log_images=0)
    x = scenes[:16]
    task.train()
    task.model(scenes[16:80])  # k-means initialisation
    codebook = task.model.quantizer.codebook.detach().clone()  # (K, D), before this step's EMA update
    with torch.no_grad():
        z = task.model.encoder(x)  # (B, D, h, w)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = codebook[torch.cdist(flat, codebook).argmin(-1)].reshape(z.shape[0], *z.shape[2:], -1).permute(0, 3, 1, 2)
        recon = F.mse_loss(task.model.decoder(e), x).item()
        commit = beta * F.mse_loss(e, z).item()
    loss = task.training_step({"image": x}, 0).item()
    assert commit > 1e-3 * recon
    assert loss - recon == pytest.approx(commit, rel=1e-2)


def test_reconstruction_grid_puts_each_row_of_inputs_above_its_reconstructions():
    from tx_suite.tasks.callbacks.generation_images import interleave_rows

    top = torch.arange(8.0).view(8, 1, 1, 1)
    out = interleave_rows(top, top + 100, nrow=4)
    assert out.flatten().tolist() == [0, 1, 2, 3, 100, 101, 102, 103, 4, 5, 6, 7, 104, 105, 106, 107]


@pytest.mark.parametrize("n_images, val_size, rows", [(4, 100, 1), (16, 8, 1), (16, 100, 2), (20, 13, 1)])
def test_reconstruction_grid_draws_whole_rows_of_the_images_it_has(tmp_path, monkeypatch, n_images, val_size, rows):
    """log_images 4 (< a row of 8) drew nothing and crashed (torch.stack of an empty list), and a
    validation set smaller than n_images ran past its end, both after the first training epoch."""
    from types import SimpleNamespace

    from tx_suite.tasks.callbacks import generation_images

    drawn = {}
    monkeypatch.setattr(generation_images, "log_image",
                        lambda trainer, key, image, caption=None: drawn.setdefault(key, image))
    model = VQVAE(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8).eval()
    data = [{"image": torch.rand(3, 32, 32)} for _ in range(val_size)]
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, world_size=1,
                              datamodule=SimpleNamespace(datasets={"val": data}))
    module = SimpleNamespace(model=model, device=torch.device("cpu"), code_counts=torch.ones(32))
    generation_images.ReconstructionGrid(n_images=n_images).on_validation_end(trainer, module)
    per_row = min(8, n_images, val_size)
    assert drawn["val/reconstructions"].shape[-2:] == (2 * rows * 33 + 1, per_row * 33 + 1)  # 32 px + padding 1
    with pytest.raises(ValueError, match="n_images >= 1"):
        generation_images.ReconstructionGrid(n_images=0)


def test_decode_accepts_exactly_the_codebook_range():
    model = VQVAE(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8).eval()
    assert model.decode(torch.tensor([[[0, 31], [31, 0]]])).shape == (1, 3, 8, 8)
    for bad in (32, -1):
        with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
            model.decode(torch.tensor([[[0, bad], [1, 2]]]))


def test_one_cycle_defaults_to_a_30_percent_warmup_and_sdpa_names():
    """one_cycle's default warm-up (JudgeTask uses it) is torch's pct_start=0.3: the peak at
    step 29 of 100. sdpa_backend names pin their kernel, case-insensitively."""
    import torch.nn.attention as attention

    from tx_suite.tasks.one_cycle import one_cycle
    from tx_suite.tasks.sdpa_backend import sdpa_backend_context

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched, lrs = one_cycle(opt, 1e-3, 100), []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(range(100), key=lrs.__getitem__) == 29 and lrs[29] == pytest.approx(1e-3)
    B = attention.SDPBackend
    for name, member in (("math", B.MATH), ("Math", B.MATH), ("flash", B.FLASH_ATTENTION),
                         ("FLASH_ATTENTION", B.FLASH_ATTENTION), ("efficient", B.EFFICIENT_ATTENTION),
                         ("cudnn_attention", B.CUDNN_ATTENTION)):
        with sdpa_backend_context(name):  # device None: pinned as asked
            assert torch._C._get_flash_sdp_enabled() == (member == B.FLASH_ATTENTION), name
            assert torch._C._get_math_sdp_enabled() == (member == B.MATH), name
            assert torch._C._get_mem_efficient_sdp_enabled() == (member == B.EFFICIENT_ATTENTION), name
            assert torch._C._get_cudnn_sdp_enabled() == (member == B.CUDNN_ATTENTION), name


def test_a_cuda_only_sdpa_backend_warns_once_per_name_and_device(monkeypatch):
    import warnings

    from tx_suite.tasks.sdpa_backend import sdpa_backend_context

    monkeypatch.setattr("tx_suite.tasks.sdpa_backend._warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with sdpa_backend_context("efficient", "cpu"):
                pass
        with sdpa_backend_context("cudnn", "cpu"):
            pass
    assert [str(w.message).split(" has")[0] for w in caught] == ["sdpa_backend='efficient'", "sdpa_backend='cudnn'"]


def test_flash_on_cpu_trains_with_attention_dropout():
    """The CPU flash kernel has no dropout: with flash pinned, a training step with attn_dropout > 0
    failed with "No available kernel" (evaluation passed), so the sanity check hid it."""
    import torch.nn.functional as F

    from tx_suite.tasks.sdpa_backend import sdpa_backend_context

    q = torch.randn(2, 2, 5, 8, requires_grad=True)
    with sdpa_backend_context("flash", "cpu"):
        F.scaled_dot_product_attention(q, q, q, dropout_p=0.1).sum().backward()
        out = F.scaled_dot_product_attention(q, q, q)  # no dropout: flash itself runs
    with sdpa_backend_context("math", "cpu"):
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, q, q))


def test_sizes_the_models_cannot_take_are_refused():
    """A 30x30 image came back as a 28x28 reconstruction (the loss then failed on the shapes), and
    a transposed code grid was flattened into the wrong 2-D positions without a word."""
    from tx_suite.models.text_to_image import TextToImageTransformer

    vq = VQVAE(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8).eval()
    for bad in (torch.rand(1, 3, 30, 30), torch.rand(1, 3, 32, 30)):
        with pytest.raises(ValueError, match="not a multiple of the VQ-VAE's downsample factor 4"):
            vq(bad)
        with pytest.raises(ValueError, match="not a multiple"):
            vq.encode(bad)
    assert vq(torch.rand(1, 3, 32, 24)).recon.shape == (1, 3, 32, 24)
    m = TextToImageTransformer(30, 5, 16, 3, 4, d_model=32, n_heads=4, d_ff=64, n_layers=1).eval()
    text, codes = torch.randint(0, 30, (2, 5)), torch.randint(0, 16, (2, 3, 4))
    out = m(text, codes)
    torch.testing.assert_close(m(text, codes.flatten(1)).image_logits, out.image_logits)
    for bad in (codes.transpose(1, 2), codes.reshape(2, 2, 6), codes.flatten(1)[:, :11]):
        with pytest.raises(ValueError, match=r"image codes must be \(B, 3, 4\) or \(B, 12\)"):
            m(text, bad)


def test_a_mid_epoch_resume_keeps_the_epochs_training_code_histogram(tmp_path):
    """train/codebook_usage and /perplexity are over the whole epoch: a run killed after batch 4 of 6
    and resumed from its step-4 last.ckpt reports the uninterrupted epochs' values (it counted only
    the two batches after the resume, and called one used code a collapsed codebook); the next
    epoch starts from zero again."""
    from tx_suite.data.captioned_mnist_datamodule import CaptionedMNISTDataModule
    from tx_suite.tasks.callbacks import RestoreLoaderState, RNGStateCallback, RunCheckpoint

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 3:
                raise RuntimeError("killed")

    class Histograms(pl.Callback):  # callbacks' epoch-end hooks run before the task's, which logs
        def __init__(self):
            self.seen = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.seen.append(pl_module.train_code_counts.clone())

    def fit(root, *extra, ckpt_path=None):
        pl.seed_everything(0, verbose=False)
        task = VQVAETask(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8, log_images=0)
        trainer = pl.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=root, callbacks=[
                                 RunCheckpoint(dirpath=root, save_last=True, monitor=None, last_every_n_train_steps=2),
                                 RestoreLoaderState(), RNGStateCallback(), *extra])
        trainer.fit(task, CaptionedMNISTDataModule(batch_size=8, train_size=48, val_size=16, test_size=16),
                    ckpt_path=ckpt_path, weights_only=True)
        return task, trainer

    whole, resumed = Histograms(), Histograms()
    fit(tmp_path / "whole", whole)
    with pytest.raises(RuntimeError, match="killed"):
        fit(tmp_path / "cut", Crash())
    fit(tmp_path / "cut", resumed, ckpt_path=tmp_path / "cut" / "last.ckpt")
    assert [int(c.sum()) for c in whole.seen] == [6 * 8 * 8 * 8] * 2  # 6 batches of 8 images, 8x8 codes each
    assert len(resumed.seen) == 2 and all(torch.equal(a, b) for a, b in zip(resumed.seen, whole.seen))


def test_only_a_training_batch_initialises_the_codebook(scenes):
    """Lightning's sanity check runs validation images (held-out test digits) through the model
    before any training batch; the library's k-means initialisation used to take them."""
    torch.manual_seed(0)
    model = VQVAE(hidden=16, res_channels=8, n_res_blocks=1, codebook_size=32, codebook_dim=8)
    model.eval()
    out = model(scenes[-32:])
    assert model.encode(scenes[-32:]).eq(0).all() and out.codes.eq(0).all()  # the all-zero codebook
    assert not bool(model.quantizer._codebook.initted)
    assert model.quantizer._codebook.embed.abs().sum() == 0
    model.train()
    model(scenes[:64])
    assert bool(model.quantizer._codebook.initted)
    trained_init = model.quantizer._codebook.embed.clone()
    assert trained_init.abs().sum() > 0
    model.eval()
    model(scenes[-32:])  # eval after initialisation changes nothing
    assert torch.equal(model.quantizer._codebook.embed, trained_init)
