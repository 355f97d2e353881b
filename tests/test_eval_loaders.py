"""Evaluation loaders leave torch's global generator alone, so validating more or less often does
not change a training run's dropout masks and shuffles (tx_suite.utils.eval_loader)."""

import pytest
import torch

from tx_suite.data.captioned_mnist_datamodule import CaptionedMNISTDataModule
from tx_suite.data.mnist import MNISTDataModule
from tx_suite.data.multi30k_datamodule import Multi30kDataModule


def _multi30k(tmp_path):
    return Multi30kDataModule(train_limit=200, vocab_size=400, cache_dir=str(tmp_path))


def _mnist(tmp_path):
    return MNISTDataModule(cache_dir=str(tmp_path), val_size=500, batch_size=32)


def _captioned(tmp_path):
    return CaptionedMNISTDataModule(batch_size=8, train_size=16, val_size=8, test_size=8)


@pytest.mark.parametrize("make", [_multi30k, _mnist, _captioned])
def test_iterating_the_evaluation_loaders_draws_nothing_from_the_global_generator(make, tmp_path):
    dm = make(tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_translation_run_trains_the_same_whether_it_validates_every_epoch_or_not(tmp_path):
    """The task's validation (greedy BLEU, samples, attention maps) must not touch the training
    run's random stream either: the weights after 3 epochs with dropout are equal."""
    import pytorch_lightning as pl

    from tx_suite.tasks.callbacks.translation_attention import TranslationAttentionMaps
    from tx_suite.tasks.callbacks.translation_samples import TranslationSamples
    from tx_suite.tasks.translation import TranslationTask

    def fit(every):
        pl.seed_everything(0)
        task = TranslationTask(vocab_size=800, d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1,
                               n_decoder_layers=1, dropout=0.3, lr=3e-3, warmup_steps=4)
        dm = Multi30kDataModule(train_limit=600, vocab_size=800, max_tokens=1024, max_len=64,
                                cache_dir=str(tmp_path / "cache"))
        trainer = pl.Trainer(max_epochs=3, limit_train_batches=3, limit_val_batches=1, check_val_every_n_epoch=every,
                             num_sanity_val_steps=0, default_root_dir=tmp_path / f"every{every}", logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[TranslationSamples(n=2), TranslationAttentionMaps(n_sentences=1)])
        trainer.fit(task, dm)
        return task.state_dict()

    often, rarely = fit(1), fit(3)
    assert all(torch.equal(often[k], rarely[k]) for k in often)
