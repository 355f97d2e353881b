"""The argparse parser of the plain (non-LightningCLI) commands: exact option names, either spelling.

``tx-suite translate``, ``classify``, ``generate``, ``compare`` and ``average`` grew their options
apart: some were spelled with ``_`` (``--beam_size``), some with ``-`` (``--no-resize``), some both.
A flag copied from one command to its sibling then failed, and argparse's prefix matching made
``translate --ckpt X`` quietly mean ``--ckpt_path``, against the rule of the training commands
(``docs/cli.md``: no prefix matching). This parser accepts every option in both spellings and
only by its full name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


class OptionParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without prefix matching that takes ``--a_b`` and ``--a-b`` alike.

    The spelling an option was declared with is the one ``--help`` shows; the other is rewritten to
    it before parsing (``--name=value`` included). Arguments after ``--`` are left alone.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _declared(self, arg: str) -> str:
        name, eq, value = arg.partition("=")
        if name in self._option_string_actions:
            return arg
        for other in ("--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")):
            if other in self._option_string_actions:
                return other + eq + value
        return arg

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        args = [self._declared(a) if a.startswith("--") and i < end else a for i, a in enumerate(args)]
        return super().parse_known_args(args, namespace)
