"""YAML experiment configs with ``_base_`` inheritance (plain Python, no Lightning).

A config file may start with ``_base_: [relative/path.yaml, ...]`` (a single string is accepted
too). Bases are loaded first, recursively, with paths relative to the file that names them, and
merged left to right; the file's own keys are merged last and win. Merge rules
(:func:`deep_merge`):

* dict + dict: merged key by key, recursively;
* two dicts with different ``class_path`` values: the later subtree replaces the earlier one whole
  (the init_args of one class mean nothing to another);
* anything else (lists, scalars, a dict over a scalar): the later value replaces the earlier one.

:func:`expand_config_argv` applies this to a ``tx-suite`` command line before LightningCLI parses it.
"""

from __future__ import annotations

import atexit
import copy
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

BASE_KEY = "_base_"
CONFIG_FLAGS = ("--config", "-c")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), as jsonargparse does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class ConfigError(ValueError):
    """A config file is missing, unreadable, not a mapping, or has a cyclic/invalid ``_base_``."""


def deep_merge(base: Any, override: Any) -> Any:
    """Merge ``override`` into ``base`` and return a new object (inputs are not modified).

    Dicts merge recursively; a dict whose ``class_path`` differs from the base's replaces it whole;
    every other value (lists included) replaces the base value.
    """
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    if "class_path" in base and "class_path" in override and base["class_path"] != override["class_path"]:
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if key in merged else copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise ConfigError(f"invalid YAML in {path}: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Load ``path`` with its ``_base_`` files merged in; the result has no ``_base_`` key.

    Raises:
        ConfigError: a file is missing or invalid, ``_base_`` is not a string/list of strings, or the
            bases form a cycle (the message names the chain).
    """
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"cyclic _base_ chain: {cycle}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: _base_ file not found: {base} (looked at {base_path})")
        merged = deep_merge(merged, load_config(base_path, (*_chain, path)))
    return deep_merge(merged, data)


def has_bases(path: str | Path) -> bool:
    """True when the YAML file at ``path`` has a top-level ``_base_`` key."""
    return BASE_KEY in _read_yaml(Path(path))


def _config_value_index(argv: list[str], i: int) -> tuple[str | None, int]:
    """Return (config path, index of the token holding it) for a config flag at ``argv[i]``."""
    token = argv[i]
    for flag in CONFIG_FLAGS:
        if token == flag:
            return (argv[i + 1], i + 1) if i + 1 < len(argv) else (None, i)
        if flag.startswith("--") and token.startswith(flag + "="):
            return token[len(flag) + 1 :], i
    return None, i


def config_paths(argv: list[str]) -> list[str]:
    """The config files named on a command line (``--config X``, ``--config=X``, ``-c X``), in order."""
    paths = []
    for i in range(len(argv)):
        path, _ = _config_value_index(argv, i)
        if path is not None and argv[i] != path:
            paths.append(path)
    return paths


_TMP_DIRS: list[str] = []


def _cleanup_tmp_dirs() -> None:
    for d in _TMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)
    _TMP_DIRS.clear()


def expand_config_argv(argv: list[str]) -> list[str]:
    """Replace each ``--config FILE`` that uses ``_base_`` by a temporary file holding the merge.

    Files without ``_base_`` are passed through unchanged, so jsonargparse still resolves them
    itself. The temporary files keep the original file names and are deleted at interpreter exit.
    The order of arguments is kept: later ``--config`` files and later ``--key=value`` overrides
    still win, as LightningCLI defines.

    Raises:
        ConfigError: as :func:`load_config`.
    """
    out = list(argv)
    tmp_dir: str | None = None
    for i in range(len(out)):
        path, idx = _config_value_index(out, i)
        if path is None or out[i] == path:
            continue
        src = Path(path)
        if not src.is_file():
            raise ConfigError(f"config file not found: {path}")
        if not has_bases(src):
            continue
        merged = load_config(src)
        if tmp_dir is None:
            tmp_dir = tempfile.mkdtemp(prefix="tx-suite-config-")
            _TMP_DIRS.append(tmp_dir)
            if len(_TMP_DIRS) == 1:
                atexit.register(_cleanup_tmp_dirs)
        dst = Path(tmp_dir) / f"{i:02d}" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
        if idx == i:  # --config=FILE form
            out[i] = f"{out[i].split('=', 1)[0]}={dst}"
        else:
            out[idx] = str(dst)
    return out
