"""YAML experiment configs with ``_base_`` inheritance (plain Python, no Lightning).

A config file may start with ``_base_: [relative/path.yaml, ...]`` (a single string is accepted
too). Bases are loaded first, recursively, with paths relative to the file that names them, and
merged left to right; the file's own keys are merged last and win. Merge rules
(:func:`deep_merge`):

* dict + dict: merged key by key, recursively;
* two dicts with different ``class_path`` values: the later subtree replaces the earlier one whole
  (the init_args of one class mean nothing to another);
* a ``{_merge_: [...]}`` mapping over a list of ``class_path`` entries (``trainer.callbacks``)
  edits that list instead of replacing it: each entry is merged into the one entry of the same
  ``class_path`` (appended if there is none); an entry with ``_remove_: true`` deletes it;
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
MERGE_KEY = "_merge_"
REMOVE_KEY = "_remove_"
CONFIG_FLAGS = ("--config", "-c")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), as jsonargparse does,
    and refuses a key repeated in one mapping (PyYAML and jsonargparse keep the last one silently,
    so a pasted ``lr:`` line would quietly override the one above it)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            # Keys brought in by a `<<` merge may be overridden: that is what merge keys are for.
            for key_node, _ in [(k, v) for k, v in node.value if k.tag != "tag:yaml.org,2002:merge"]:
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if not repeated:
                    seen[key] = key_node.start_mark.line + 1
                else:  # on another line or the same one ({lr: 1, lr: 2})
                    first = seen[key]
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first}), again on", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


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
    a ``{_merge_: [...]}`` mapping edits a base list of ``class_path`` entries
    (:func:`merge_by_class_path`); every other value (lists included) replaces the base value.

    Raises:
        ConfigError: a ``_merge_`` edit that does not apply (see :func:`merge_by_class_path`).
    """
    if _is_list_edit(override):
        return merge_by_class_path([] if base is None else base, override[MERGE_KEY])
    if base is None and isinstance(override, dict) and _has_key(override, MERGE_KEY):
        base = {}  # no inherited section: its `_merge_` lists edit empty lists, as one level up
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    if "class_path" in base and "class_path" in override and base["class_path"] != override["class_path"]:
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged.get(key), value) if key in merged or _has_key(value, MERGE_KEY) else copy.deepcopy(value)
    return merged


def _is_list_edit(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {MERGE_KEY}


def merge_by_class_path(base: Any, edits: Any) -> list:
    """Edit a list of ``{class_path, init_args}`` entries (a callbacks list) by ``class_path``.

    Each edit is deep-merged into the base entry with the same ``class_path``, or appended when
    there is none; an edit with ``_remove_: true`` deletes its entry. The order of the base list
    is kept.

    Raises:
        ConfigError: the base is not a list, an edit has no ``class_path``, two base entries share
            the edit's ``class_path`` (ambiguous), or a ``_remove_`` names no entry.
    """
    if not isinstance(base, list):
        raise ConfigError(f"{MERGE_KEY} edits an inherited list, but the inherited value is {type(base).__name__}")
    if not isinstance(edits, list):
        raise ConfigError(f"{MERGE_KEY} takes a list of class_path entries, got {type(edits).__name__}")
    merged = copy.deepcopy(base)
    for edit in edits:
        if not isinstance(edit, dict) or not isinstance(edit.get("class_path"), str):
            raise ConfigError(f"{MERGE_KEY}: each entry needs a class_path, got {edit!r}")
        name = edit["class_path"]
        hits = [i for i, entry in enumerate(merged) if isinstance(entry, dict) and entry.get("class_path") == name]
        if len(hits) > 1:
            raise ConfigError(f"{MERGE_KEY}: {len(hits)} inherited entries have class_path {name}; restate the list")
        remove = edit.get(REMOVE_KEY, False)
        edit = {k: v for k, v in edit.items() if k != REMOVE_KEY}
        if remove:
            if not hits:
                raise ConfigError(f"{MERGE_KEY}: cannot remove {name}: no inherited entry has that class_path")
            del merged[hits[0]]
        elif hits:
            merged[hits[0]] = deep_merge(merged[hits[0]], edit)
        else:
            merged.append(copy.deepcopy(edit))
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        detail = " ".join(str(err).replace('in "<unicode string>", ', "").split())
        raise ConfigError(f"invalid YAML in {path}: {detail}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
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
    if not bases and _has_key(data, MERGE_KEY):
        # Without this it would edit an empty list and silently replace an earlier --config's list.
        raise ConfigError(f"{path}: _merge_ edits a list inherited through _base_, and this file has no _base_ "
                          "(it does not reach lists of earlier --config files)")
    merged: dict = {}
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: _base_ file not found: {base} (looked at {base_path})")
        merged = deep_merge(merged, load_config(base_path, (*_chain, path)))
    try:
        return deep_merge(merged, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def needs_expansion(path: str | Path) -> bool:
    """True when the YAML file at ``path`` uses ``_base_`` or ``_merge_`` (jsonargparse knows neither)."""
    data = _read_yaml(Path(path))
    return BASE_KEY in data or _has_key(data, MERGE_KEY)


def _has_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_has_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_has_key(v, key) for v in value)
    return False


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


#: Trainer options typed ``float | int`` by Lightning, where ``1`` (one batch) and ``1.0`` (all
#: batches) differ. jsonargparse tries ``float`` first, so ``--trainer.limit_val_batches=1`` would
#: silently mean the whole set; :func:`integer_batch_limits` recovers what was written.
BATCH_LIMIT_KEYS = tuple(f"limit_{s}_batches" for s in ("train", "val", "test", "predict"))


def integer_batch_limits(argv: list[str]) -> dict[str, int]:
    """The ``trainer.limit_*_batches`` whose last setting on this command line is an integer.

    Walks ``argv`` in order as LightningCLI applies it: ``--config`` files (their ``trainer``
    section, ``_base_`` merged), whole ``--trainer`` sections (inline YAML/JSON or a file) and
    ``--trainer.limit_X_batches=V`` / ``--trainer.limit_X_batches V`` overrides; later settings
    win. A value is an integer when YAML reads it as one (``1``, not ``1.0``).
    """
    raw: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        path, idx = _config_value_index(argv, i)
        if path is not None and token != path:
            try:
                trainer = load_config(path).get("trainer")
            except ConfigError:
                trainer = None  # jsonargparse reports the bad file itself
            if isinstance(trainer, dict):
                raw.update({k: trainer[k] for k in BATCH_LIMIT_KEYS if k in trainer})
            i = idx + 1
            continue
        if token == "--trainer" or token.startswith("--trainer="):
            # A whole trainer section: inline YAML/JSON (``--trainer='{limit_val_batches: 1}'``)
            # or a file (jsonargparse accepts both).
            if token == "--trainer":
                i += 1
                value = argv[i] if i < len(argv) else ""
            else:
                value = token[len("--trainer="):]
            trainer = _yaml_scalar(value)
            if isinstance(trainer, str) and Path(trainer).is_file():
                try:
                    trainer = load_config(trainer)
                except ConfigError:
                    trainer = None
            if isinstance(trainer, dict):
                raw.update({k: trainer[k] for k in BATCH_LIMIT_KEYS if k in trainer})
            i += 1
            continue
        for key in BATCH_LIMIT_KEYS:
            flag = f"--trainer.{key}"
            if token.startswith(flag + "="):
                raw[key] = _yaml_scalar(token[len(flag) + 1:])
            elif token == flag and i + 1 < len(argv):
                raw[key] = _yaml_scalar(argv[i + 1])
                i += 1
        i += 1
    return {k: v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}


def _yaml_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def default_experiment_name(config_files: list[str]) -> str:
    """The experiment a command line runs: the stem of its last config file that says *what* to run.

    A file that sets nothing but ``trainer`` keys (``experiments/scale/ddp.yaml``, ``bf16.yaml``)
    says *how* to run an experiment and does not rename it, so ``--config mnist_vit.yaml --config
    experiments/scale/ddp.yaml`` stays ``mnist_vit``. Falls back to the last file when every file is
    trainer-only, and to ``"default"`` without config files. Unreadable files count as naming
    files (the parser reports them).
    """
    for path in reversed(config_files):
        try:
            content = load_config(path)  # with its _base_ files: a diff over ddp.yaml is trainer-only too
        except (OSError, ConfigError):
            return Path(path).stem
        if not set(content) <= {"trainer"}:
            return Path(path).stem
    return Path(config_files[-1]).stem if config_files else "default"


_TMP_DIRS: list[str] = []


def _cleanup_tmp_dirs() -> None:
    for d in _TMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)
    _TMP_DIRS.clear()


def _check_option_file(argv: list[str], i: int) -> None:
    """Refuse a repeated key in a YAML file given to an option (``--model file.yaml``,
    ``--trainer=file.yaml``), which jsonargparse reads itself and would take the last one of."""
    token = argv[i]
    if not token.startswith("--"):
        return
    value = token.split("=", 1)[1] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else "")
    src = Path(value)
    if src.suffix.lower() not in (".yaml", ".yml") or not src.is_file():
        return
    try:
        yaml.load(src.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.constructor.ConstructorError as err:
        if "duplicate key" in str(err):
            detail = " ".join(str(err).replace('in "<unicode string>", ', "").split())
            raise ConfigError(f"invalid YAML in {src} ({token.split('=', 1)[0]}): {detail}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        pass  # other problems: jsonargparse's own message names them


def expand_config_argv(argv: list[str]) -> list[str]:
    """Replace each ``--config FILE`` that uses ``_base_`` (or ``_merge_``) by a temporary file
    holding the merge.

    Other files are passed through unchanged, so jsonargparse still resolves them
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
            _check_option_file(out, i)
            continue
        src = Path(path)
        if src.is_dir():
            raise ConfigError(f"config path is a directory, not a YAML file: {path}")
        if not src.is_file():
            raise ConfigError(f"config file not found: {path}")
        if not _read_yaml(src):  # jsonargparse would only say "Unexpected config"
            raise ConfigError(f"config file is empty: {path}")
        if not needs_expansion(src):
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
