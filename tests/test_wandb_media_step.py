"""W&B tables and images land at the step of the validation metrics they belong to (Lightning logs
those at ``_batches_that_stepped``, one less than ``global_step`` inside fit)."""

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from test_translation_task import TINY, _dm
from test_vision_helpers import mnist, tiny_task, trainer
from tx_suite.tasks.callbacks.translation_attention import TranslationAttentionMaps
from tx_suite.tasks.callbacks.translation_samples import TranslationSamples
from tx_suite.tasks.callbacks.vision_attention import AttentionMaps
from tx_suite.tasks.callbacks.vision_report import ClassificationReport
from tx_suite.tasks.translation import TranslationTask


@pytest.fixture
def logged(monkeypatch, tmp_path):
    """(key, step) of everything a disabled-mode WandbLogger is asked to log."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    seen = []
    monkeypatch.setattr(WandbLogger, "log_metrics",
                        lambda self, metrics, step=None: seen.extend((k, step) for k in metrics))
    monkeypatch.setattr(WandbLogger, "log_image", lambda self, key, images, step=None, **kw: seen.append((key, step)))
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, key, columns=None, data=None, step=None, **kw:
                        seen.append((key, step)))
    return seen


def _steps(logged, key):
    return [s for k, s in logged if k == key]


def test_translation_samples_and_attention_maps_share_the_val_metrics_step(tmp_path, logged):
    pl.seed_everything(0)
    tr = pl.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0,
                    default_root_dir=tmp_path, logger=WandbLogger(save_dir=str(tmp_path), mode="disabled"),
                    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                    callbacks=[TranslationSamples(n=2), TranslationAttentionMaps(n_sentences=1)])
    tr.fit(TranslationTask(**TINY), _dm(tmp_path / "cache"))
    metric_steps = _steps(logged, "val/loss")
    assert len(metric_steps) == 2 and metric_steps[0] != metric_steps[1]
    for key in ("val/samples", "val/attention/cross_layer0/s0", "val/attention/encoder_self_layer0/s0"):
        assert _steps(logged, key) == metric_steps, key


def test_vision_report_and_attention_share_the_val_metrics_step(tmp_path, logged):
    pl.seed_everything(0, verbose=False)
    tr = trainer(tmp_path, steps=2, logger=WandbLogger(save_dir=str(tmp_path), mode="disabled"),
                 callbacks=[AttentionMaps(num_images=2), ClassificationReport(max_images=4)])
    tr.fit(tiny_task("tx", patch_size=4), mnist(limit_train=128))
    metric_steps = _steps(logged, "val/loss")
    assert len(metric_steps) == 1
    for key in ("val/attention", "val/confusion_matrix", "val/per_class_accuracy", "val/misclassified"):
        assert _steps(logged, key) == metric_steps, key
