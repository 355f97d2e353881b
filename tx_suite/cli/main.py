"""Entry point of the ``tx-suite`` command (also ``python -m tx_suite``).

``tx-suite {fit,validate,test,predict} ...`` runs LightningCLI (:mod:`tx_suite.cli.lightning_cli`);
the extra sub-commands in :data:`COMMANDS` are dispatched before Lightning is imported, so
``tx-suite --help`` and ``tx-suite translate ...`` start fast. Errors in configs, data files and
checkpoints print one line and exit with status 2 (``TX_SUITE_DEBUG=1`` re-raises them with the
full traceback); other failures during a run print one line and exit with status 1.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

PROG = "tx-suite"

#: Extra sub-commands: name -> "module:function". The function takes the remaining argv (list of
#: str) and returns an exit status (int or None). Modules are imported only when their command runs.
COMMANDS: dict[str, str] = {
    "translate": "tx_suite.cli.translate:main",
    "classify": "tx_suite.cli.classify:main",
    "generate": "tx_suite.cli.generate:main",
    "compare": "tx_suite.cli.compare:main",
    "average": "tx_suite.cli.average:main",
}

#: One-line descriptions for ``tx-suite --help``.
DESCRIPTIONS: dict[str, str] = {
    "fit": "train a model (LightningCLI; resumes with --ckpt_path last)",
    "validate": "run the validation loop on a checkpoint",
    "test": "run the test loop on a checkpoint (--ckpt_path best|last|FILE)",
    "predict": "run the predict loop on a checkpoint",
    "translate": "translate sentences with a trained translation checkpoint",
    "classify": "classify images with a trained vision checkpoint",
    "generate": "generate images from text with a trained text-to-image checkpoint",
    "compare": "compare the metrics of runs under runs/ side by side",
    "average": "average the weights of checkpoints (the last N epochs)",
}

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

EXIT_USAGE = 2
EXIT_FAILURE = 1
#: 128 + SIGPIPE, what a shell reports for a command whose reader went away (``tx-suite compare | head``)
EXIT_BROKEN_PIPE = 141


def usage() -> str:
    lines = [
        f"usage: {PROG} <command> [options]",
        "",
        "Transformer experiments (translation, vision, text-to-image) on LightningCLI.",
        "",
        "commands:",
    ]
    for name in (*LIGHTNING_SUBCOMMANDS, *COMMANDS):
        lines.append(f"  {name:<10} {DESCRIPTIONS.get(name, '')}")
    lines += [
        "",
        "examples:",
        f"  {PROG} fit --config experiments/translation/multi30k_de_en_quickstart.yaml",
        f"  {PROG} fit --config EXP.yaml --trainer.max_epochs=3 --print_config",
        f"  {PROG} fit --config EXP.yaml --ckpt_path last        # resume the newest run",
        f"  {PROG} test --config EXP.yaml --ckpt_path best",
        "",
        f"`{PROG} <command> --help` shows the options of a command; docs/cli.md has the details.",
        f"Set TX_SUITE_DEBUG=1 to see full tracebacks; `{PROG} --version` for versions.",
    ]
    return "\n".join(lines)


def debug_enabled() -> bool:
    return os.environ.get("TX_SUITE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def one_line(err: BaseException) -> str:
    """``err`` as a single line: its message with whitespace runs collapsed."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def load_command(name: str) -> Callable[[list[str]], int | None]:
    """Import the function registered for ``name`` in :data:`COMMANDS`.

    Raises:
        ImportError: the module or function does not exist (e.g. a task not merged yet).
    """
    module_name, func_name = COMMANDS[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (config, data file, checkpoint): exit status 2."""
    from tx_suite.utils.checkpoint import CheckpointError
    from tx_suite.utils.config import ConfigError

    types: tuple[type[BaseException], ...] = (
        ConfigError, CheckpointError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, TypeError,
        KeyError, ImportError,
    )
    if "pytorch_lightning" in sys.modules:  # bad trainer/callback settings, e.g. checkpoint.mode=maxx
        from pytorch_lightning.utilities.exceptions import MisconfigurationException

        types += (MisconfigurationException,)
    return types


def version_line() -> str:
    """``tx-suite X.Y.Z (torch A, pytorch-lightning B, Python C)``: what bug reports need first."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return (f"{PROG} {v('tx-suite')} (torch {v('torch')}, pytorch-lightning {v('pytorch-lightning')}, "
            f"Python {platform.python_version()})")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)).rsplit(os.sep, 1)[0]  # .../tx_suite


def _raised_here(err: BaseException) -> bool:
    """Whether ``err`` was raised by tx-suite's own code (its message was written for the user)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)


def root_cause(err: BaseException) -> BaseException:
    """The error to show: along the ``raise ... from`` chain, the outermost one raised by tx-suite
    itself (``ConnectionError("cannot reach ...; are you offline?") from gaierror`` shows ours),
    else the original error (jsonargparse and Lightning wrap instantiation errors in their own)."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__
    return next((e for e in chain if _raised_here(e)), chain[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tx-suite`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    A reader that closes the output early (``tx-suite --help | head -3``) ends the command quietly
    with status 141, as ``SIGPIPE`` would, instead of a ``BrokenPipeError`` traceback.
    """
    try:
        status = _main(argv)
        sys.stdout.flush()  # stdout to a pipe is block-buffered: a closed reader shows here
        return status
    except BrokenPipeError:
        if not _stdout_broken():
            raise
        # Python flushes stdout again at exit and would print "Exception ignored ... BrokenPipeError"
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _stdout_broken() -> bool:
    """Whether stdout's reader has gone (so a BrokenPipeError came from stdout, not from a socket
    or a child process's pipe): poll reports an error on the write end of a pipe without readers."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a file
        return False


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else EXIT_USAGE
    if args[0] in ("-V", "--version"):
        print(version_line())
        return 0
    command = args[0]
    if command in COMMANDS:
        try:
            func = load_command(command)
        except ImportError as err:
            print(f"{PROG} {command}: error: command not available ({one_line(err)})", file=sys.stderr)
            return EXIT_USAGE
        return _run_guarded(command, lambda: func(args[1:]))
    if command.startswith("-") or command in LIGHTNING_SUBCOMMANDS:
        return _run_guarded(command, lambda: _run_lightning(args, from_sys_argv=argv is None))
    print(f"{PROG}: error: unknown command {command!r}; choose from {', '.join((*LIGHTNING_SUBCOMMANDS, *COMMANDS))}",
          file=sys.stderr)
    return EXIT_USAGE


def _run_lightning(args: list[str], from_sys_argv: bool) -> int:
    from tx_suite.cli.lightning_cli import run_cli

    return run_cli(args, from_sys_argv=from_sys_argv)


def _run_guarded(command: str, fn: Callable[[], int | None]) -> int:
    """Call ``fn``; turn exceptions into one line on stderr and an exit status."""
    try:
        status = fn()
    except SystemExit as exc:  # argparse/jsonargparse errors and --help/--print_config
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"{PROG} {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the top level is where errors become messages
        if debug_enabled() or (isinstance(err, BrokenPipeError) and _stdout_broken()):
            raise  # main() ends a closed pipe quietly
        err = root_cause(err)
        if isinstance(err, RuntimeError) and str(err).startswith("Error(s) in loading state_dict"):
            # torch's list of every mismatched tensor: the first one says enough
            from tx_suite.utils.checkpoint import CheckpointError, state_dict_mismatch

            err = CheckpointError(f"the checkpoint's weights do not fit the model the config builds (a "
                                  f"--model.init_args value that changes its shape?): {state_dict_mismatch(err)}")
        user = isinstance(err, _user_errors())
        kind = "error" if user else f"error ({type(err).__name__})"
        print(f"{PROG} {command}: {kind}: {one_line(err)}", file=sys.stderr)
        if not user:
            print(f"{PROG}: set TX_SUITE_DEBUG=1 for the full traceback", file=sys.stderr)
        return EXIT_USAGE if user else EXIT_FAILURE
    return int(status or 0)
