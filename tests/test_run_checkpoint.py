"""RunCheckpoint: last.ckpt at every save point and at the end of the fit, best.ckpt unaffected."""

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from tx_suite.tasks.callbacks.run_checkpoint import RunCheckpoint
from tx_suite.utils.checkpoint import load_checkpoint


class Improving(pl.LightningModule):
    """A linear model whose validation score improves at every validation (val/loss = -step)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", -float(self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path, n_batches, epochs=1, last_every=3, **trainer_kw):
    """Fit with RunCheckpoint(last_every_n_train_steps=last_every); return the (file, global step,
    batches of the epoch processed) of every checkpoint write."""
    data = DataLoader(TensorDataset(torch.randn(n_batches, 2)), batch_size=1)
    writes = []
    ck = RunCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                       save_last=True, last_every_n_train_steps=last_every)
    real = ck._save_checkpoint

    def spy(trainer, filepath):
        writes.append((filepath.rsplit("/", 1)[1], trainer.global_step,
                       trainer.fit_loop.epoch_loop.batch_progress.current.processed))
        real(trainer, filepath)

    ck._save_checkpoint = spy
    trainer = pl.Trainer(max_epochs=epochs, limit_val_batches=1, callbacks=[ck], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, **trainer_kw)
    trainer.fit(Improving(), data, data)
    return writes


def test_a_validation_at_a_mid_epoch_last_save_step_still_writes_best(tmp_path):
    # val_check_interval == last_every_n_train_steps: at steps 3 and 6 both the mid-epoch last.ckpt
    # and the validation's best.ckpt are due; the first must not make ModelCheckpoint skip the second
    writes = fit(tmp_path, 8, val_check_interval=3)
    assert [step for name, step, _ in writes if name == "best.ckpt"] == [3, 6]
    assert load_checkpoint(tmp_path / "best.ckpt")["global_step"] == 6


def test_last_ckpt_is_the_final_step_when_the_fit_ends_after_its_last_validation(tmp_path):
    # 8 batches, validation every 3: steps 7-8 come after the last save point. Lightning writes
    # last.ckpt at the end of a fit only if it wrote none before, so it stayed at step 6.
    fit(tmp_path, 8, val_check_interval=3)
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 8


def test_a_due_step_on_an_epochs_last_batch_is_written_at_the_epoch_end(tmp_path):
    # 6 batches an epoch, validation at batch 4: the due steps 6 and 12 are last batches, left to the
    # epoch end, where no validation (hence no save point) comes. Each state is written once.
    writes = fit(tmp_path, 6, epochs=2, val_check_interval=4)
    assert [step for name, step, _ in writes if name == "last.ckpt"] == [3, 4, 6, 9, 10, 12]
    assert [step for name, step, _ in writes if name == "best.ckpt"] == [4, 10]
    # and where the epoch end validates, its save point writes last.ckpt once, not twice
    writes = fit(tmp_path / "aligned", 6, epochs=2)
    assert [step for name, step, _ in writes if name == "last.ckpt"] == [3, 6, 9, 12]
    assert [step for name, step, _ in writes if name == "best.ckpt"] == [6, 12]


def test_with_gradient_accumulation_each_due_step_is_written_once_at_the_batch_that_took_it(tmp_path):
    # 12 batches, accumulate 4: optimizer steps at batches 4, 8, 12. The batches after a step keep
    # its global_step; a last.ckpt rewritten there holds half-accumulated batches whose gradients
    # are not saved, so the resumed run's next step would see only part of them.
    writes = fit(tmp_path, 12, accumulate_grad_batches=4, last_every=1)
    last = [(step, processed) for name, step, processed in writes if name == "last.ckpt"]
    assert last == [(1, 4), (2, 8), (3, 12)]


def test_a_max_steps_stop_between_validations_resumes_where_it_stopped(tmp_path):
    """The final last.ckpt of a fit stopped by max_steps mid-epoch (validation every 3 of 8 batches,
    stop at 5): written at the end of the fit, after Lightning counted the epoch as done, it resumed
    in the next epoch (3 batches of epoch 0 never trained, the skip applied to epoch 1's order)."""
    from tx_suite.tasks.callbacks import RestoreLoaderState
    from tx_suite.utils.resumable_loader import ResumableDataLoader

    class Recorder(Improving):
        def __init__(self):
            super().__init__()
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(int(batch[0][0, 0]))
            return super().training_step(batch, batch_idx)

        def train_dataloader(self):
            return ResumableDataLoader(TensorDataset(torch.arange(8.0)[:, None].repeat(1, 2)), batch_size=1,
                                       shuffle=True, seed=0)

        def val_dataloader(self):
            return DataLoader(TensorDataset(torch.zeros(1, 2)), batch_size=1)

    def fit(root, max_steps, ckpt_path=None):
        model = Recorder()
        ck = RunCheckpoint(dirpath=root, filename="best", monitor="val/loss", mode="min", save_last=True)
        pl.Trainer(max_steps=max_steps, val_check_interval=3, callbacks=[ck, RestoreLoaderState()], logger=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(
                       model, ckpt_path=ckpt_path)
        return model.seen

    whole = fit(tmp_path / "whole", 16)
    assert fit(tmp_path / "cut", 5) == whole[:5]
    assert load_checkpoint(tmp_path / "cut" / "last.ckpt")["global_step"] == 5
    assert fit(tmp_path / "cut", 16, ckpt_path=tmp_path / "cut" / "last.ckpt") == whole[5:]


def test_keeping_several_checkpoints_under_one_fixed_name_is_refused(tmp_path):
    """save_top_k 2 with the CLI's filename "best": both kept files were best.ckpt, so every epoch
    overwrote it and --ckpt_path best tested the newest epoch, not the best."""
    import pytest

    for k in (2, -1):
        with pytest.raises(ValueError, match=f"save_top_k {k} with the fixed filename 'best'"):
            RunCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", save_top_k=k)
    RunCheckpoint(dirpath=tmp_path, filename="{epoch}-{step}", monitor="val/loss", save_top_k=2)  # distinct files
    RunCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", save_top_k=0)


def test_no_validation_keeps_one_latest_file_and_a_resume_keeps_the_ranked_best(tmp_path):
    """Without validation the latest epoch stands in for best: Lightning's monitor=None path removed
    older files only for save_top_k 1 (k 2 kept every epoch), and a run resumed without validation
    overwrote the best.ckpt its validated epochs had chosen."""
    import warnings

    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=1)

    def run(dirpath, epochs, limit_val, ckpt_path=None, **kw):
        ck = RunCheckpoint(dirpath=dirpath, monitor="val/loss", mode="min", save_last=True, **kw)
        trainer = pl.Trainer(max_epochs=epochs, limit_val_batches=limit_val, callbacks=[ck], logger=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(Improving(), data, data, ckpt_path=ckpt_path)

    run(tmp_path / "k2", 4, 0, filename="{epoch}", save_top_k=2)
    assert sorted(p.name for p in (tmp_path / "k2").glob("epoch=*.ckpt")) == ["epoch=3.ckpt"]

    class GettingWorse(Improving):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", float(self.global_step))  # the first validated epoch is the best

    ck = RunCheckpoint(dirpath=tmp_path / "r", filename="best", monitor="val/loss", mode="min", save_last=True)
    trainer = pl.Trainer(max_epochs=2, limit_val_batches=1, callbacks=[ck], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(GettingWorse(), data, data)
    assert load_checkpoint(tmp_path / "r" / "best.ckpt")["epoch"] == 0
    run(tmp_path / "r", 4, 0, ckpt_path=str(tmp_path / "r" / "last.ckpt"), filename="best", save_top_k=1)
    assert load_checkpoint(tmp_path / "r" / "last.ckpt")["epoch"] == 3
    assert load_checkpoint(tmp_path / "r" / "best.ckpt")["epoch"] == 0
