"""Plain-Python helpers shared by the CLI, tasks and scripts (no Lightning imports here).

- :mod:`tx_suite.utils.config`: YAML configs with ``_base_`` inheritance.
- :mod:`tx_suite.utils.checkpoint`: ``load_checkpoint`` (weights_only) and ``atomic_save``.
- :mod:`tx_suite.utils.atomic_write`: ``atomic_open``, the temp-file + fsync + rename every writer uses.
- :mod:`tx_suite.utils.runs`: run directories, ``last``/``best`` checkpoint lookup.
- :mod:`tx_suite.utils.run_info`: versions, git state and command line of a run.
- :mod:`tx_suite.utils.wandb_mode`: online/offline/disabled choice that never hangs.
"""
