"""Crash-safe checkpoint files for Lightning (a ``CheckpointIO`` plugin, on by default in the CLI)."""

from __future__ import annotations

from typing import Any, Callable

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from tx_suite.utils.checkpoint import atomic_save, load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with :func:`tx_suite.utils.checkpoint.atomic_save` and loads with ``weights_only=True``.

    Saving writes a temporary file in the checkpoint directory, fsyncs it and renames it over the
    target, so a process killed while saving leaves the previous ``last.ckpt``/``best.ckpt`` loadable.
    Loading refuses pickled objects (see :func:`tx_suite.utils.checkpoint.load_checkpoint`) unless
    ``weights_only=False`` is passed explicitly.

    Raises:
        TypeError: ``storage_options`` was given (not supported, as in ``TorchCheckpointIO``).
        tx_suite.utils.checkpoint.CheckpointError: on load, a missing, corrupt or unsafe file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        return load_checkpoint(path, map_location=map_location)
