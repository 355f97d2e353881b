"""Callbacks that run the model on rank 0 only skip that under a parameter-sharding strategy
(FSDP): there, rank 0's forward pass would wait forever for the other ranks' shards."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy

from tx_suite.tasks.callbacks import generation_images
from tx_suite.tasks.callbacks.generation_images import ReconstructionGrid, SampleGrid
from tx_suite.tasks.callbacks.sharded import shards_parameters
from tx_suite.tasks.callbacks.translation_attention import TranslationAttentionMaps
from tx_suite.tasks.callbacks.vision_attention import AttentionMaps


class ModelCalled(Exception):
    pass


class Untouchable:
    """A module stand-in whose every use (forward, generate, hparams, device) is recorded as a model call."""

    def __getattr__(self, name):
        raise ModelCalled(name)


HOOKS = [
    (lambda: SampleGrid(["top-left: tiny red 7"]), "on_validation_epoch_end"),
    (lambda: ReconstructionGrid(), "on_validation_end"),
    (lambda: TranslationAttentionMaps(every_n_epochs=1), "on_validation_end"),
    (lambda: AttentionMaps(every_n_epochs=1), "on_validation_epoch_end"),
    (lambda: AttentionMaps(), "on_test_epoch_end"),
]


@pytest.mark.parametrize("make, hook", HOOKS)
def test_rank_zero_model_calls_are_skipped_under_fsdp(make, hook, monkeypatch):
    def trainer(strategy, world_size=2):
        return SimpleNamespace(strategy=strategy, sanity_checking=False, is_global_zero=True, current_epoch=0,
                               max_epochs=1, max_steps=-1, global_step=0, state=SimpleNamespace(fn="fit"),
                               datamodule=Untouchable(), world_size=world_size)

    fsdp = trainer(FSDPStrategy())
    assert shards_parameters(fsdp) and not shards_parameters(trainer(DDPStrategy()))
    assert not shards_parameters(trainer(FSDPStrategy(), world_size=1))  # one rank holds every shard
    module = Untouchable()
    if isinstance(make(), ReconstructionGrid):  # its codebook histogram needs no model call
        module = SimpleNamespace(code_counts=torch.ones(8))
        plotted = []
        monkeypatch.setattr(generation_images, "log_image", lambda trainer, key, *a, **k: plotted.append(key))
    with pytest.warns(UserWarning, match="not drawn under FSDPStrategy"):
        getattr(make(), hook)(fsdp, module)
    if isinstance(make(), ReconstructionGrid):
        assert plotted == ["val/code_histogram"]
    with pytest.raises(ModelCalled):  # the control: under DDP rank 0 draws them
        getattr(make(), hook)(trainer(DDPStrategy()), Untouchable())
