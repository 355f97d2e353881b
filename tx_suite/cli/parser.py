"""The argument parser of ``tx-suite``: LightningCLI's, with one-line errors and no abbreviations."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning.cli import LightningArgumentParser

from tx_suite.utils.config import integer_batch_limits

_NOISE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes:|Errors:|- Expected a <class 'NoneType'>"
    r"|Given value type:|Given value:)"
)


def condense_parser_error(message: str) -> str:
    """One line from a (nested, multi-line) jsonargparse error: the path of keys and the cause."""
    parts = []
    for line in message.splitlines():
        text = line.strip()
        if not text or _NOISE.match(text):
            continue
        parts.append(text.removeprefix("- ").strip().rstrip(":"))
    return ": ".join(parts) or message.strip()


def _missing_config_hint(message: str, argv: list[str]) -> str:
    """For "required: fit.data, fit.model": where to find a config (the run's own, if --ckpt_path
    names a checkpoint inside a run directory)."""
    if "required" not in message or not re.search(r"\.(data|model)\b", message):
        return ""
    ckpt = next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None)
    if ckpt is None and "--ckpt_path" in argv[:-1]:
        ckpt = argv[argv.index("--ckpt_path") + 1]
    if ckpt:
        run_config = Path(ckpt).resolve().parent.parent / "config.yaml"
        if run_config.is_file():
            return f"; give the run's config: --config {run_config}"
    return "; give an experiment config: --config experiments/<task>/<experiment>.yaml"


class TxArgumentParser(LightningArgumentParser):
    """Parser whose errors are one line (``TX_SUITE_DEBUG=1`` shows jsonargparse's full message)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --trainer.max_epoch must not mean max_epochs
        kwargs.setdefault("prog", "tx-suite")  # not sys.argv[0], which may be .../__main__.py
        super().__init__(*args, **kwargs)

    def dump(self, cfg: Any, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        """jsonargparse's dump, with the ``trainer.limit_*_batches`` written as integers on this
        command line kept integers (``--print_config``, the saved ``config.yaml``): its
        ``float | int`` type would print ``1`` (one batch) as ``1.0`` (all batches)."""
        out = super().dump(cfg, *args, **kwargs)
        limits = integer_batch_limits(sys.argv[1:])
        fmt = str(kwargs.get("format", "parser_mode"))
        if not limits or not isinstance(out, str) or fmt not in ("parser_mode", "yaml", "json", "json_indented"):
            return out
        data = json.loads(out) if fmt.startswith("json") else yaml.safe_load(out)
        section = data.get("trainer") if isinstance(data, dict) else None
        if not isinstance(section, dict) or not any(
                isinstance(section.get(k), float) and section[k] == v for k, v in limits.items()):
            return out
        section.update({k: v for k, v in limits.items() if isinstance(section.get(k), float) and section[k] == v})
        if fmt.startswith("json"):
            return json.dumps(data, indent=2 if fmt == "json_indented" else None)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        from tx_suite.cli.main import debug_enabled

        if not self.exit_on_error or debug_enabled():
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        argv = sys.argv[1:]
        if parser is self and " " not in prog and argv and argv[0] in ("fit", "validate", "test", "predict"):
            prog = f"{prog} {argv[0]}"  # a config file's error comes from the root parser: name the sub-command
        hint = _missing_config_hint(message, sys.argv[1:])
        sys.stderr.write(f"{prog}: error: {condense_parser_error(message)}{hint} (see `{prog} --help`)\n")
        raise SystemExit(2)
