"""``torchclip`` command line: one dispatcher, each subcommand in its own module.

Every command speaks one way:

* a mistake gets one line, ``torchclip CMD: error: WHAT (FIX)``, and a non-zero exit: 2 for a command line
  or input refused before any work, 1 for a failure during it; ``--debug`` (any command) shows the traceback;
* ``--quiet`` turns progress bars off; ``--overwrite`` replaces what an earlier run wrote, and without it a
  command refuses to touch an existing output;
* a command that writes says where it wrote.

Subcommand modules are imported only when used, and building their parsers imports no torch, so ``--help``
and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

__all__ = ["COMMANDS", "CommandError", "UsageError", "CommandParser", "add_quiet", "add_overwrite", "describe",
           "execute", "command", "run", "main"]

# name -> (module with ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("torchclip.train.cli", "contrastive pre-training from a run config"),
    "eval": ("torchclip.evaluation.cli", "zero-shot, linear probe, few-shot and retrieval evaluation"),
    "embed": ("torchclip.embed.cli", "embed image collections or texts"),
    "index": ("torchclip.search.cli_index", "build a FAISS index over embeddings"),
    "search": ("torchclip.search.cli_search", "query an index by text or image"),
    "serve": ("torchclip.serve.cli", "web app and JSON API over an index"),
    "export": ("torchclip.export_cli", "ONNX export and int8 quantization"),
    "models": ("torchclip.cli", "list model presets"),
}

DEBUG_HELP = "on an error, show the full traceback instead of one line"


class CommandError(Exception):
    """A failure a command reports as one line; ``status`` is the exit status (1: it failed while working)."""

    status = 1

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class UsageError(CommandError):
    """An option or input that cannot work, refused before any work is done (exit status 2)."""

    status = 2


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the fix, with ``--debug`` on every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help=DEBUG_HELP)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what}; without it an existing output is refused")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)  # argparse types
nonnegative_int = _int_at_least(0)


def describe(exc: BaseException) -> str:
    """One line for an exception: its message, with the original error of a DataLoader worker unwrapped,
    the file of an ``OSError`` named, and line breaks folded."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the last line is the real error
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception|Exit)\w*: ", "", last.strip())
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        target = f" -> {exc.filename2}" if exc.filename2 else ""
        text = f"{exc.filename}{target}: {exc.strerror}"
    text = " ".join(text.split())
    if not _expected(exc):
        text = f"{type(exc).__name__}: {text} (--debug shows the traceback)"
    return text or type(exc).__name__


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _expected(exc: BaseException) -> bool:
    """Errors about the user's inputs or environment, whose message is the whole story: the common input
    error types, torchclip's own, and any raised by torchclip's code on purpose. Others (raised inside
    torch, say) are internal errors, whose type and traceback matter."""
    if isinstance(exc, (CommandError, ValueError, OSError, LookupError, ImportError)):
        return True
    if type(exc).__module__.split(".")[0] == "torchclip":
        return True
    files = re.findall(r'File "([^"]+)"', str(exc))  # a DataLoader worker's error carries its traceback as text
    if not files:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        files = [tb.tb_frame.f_code.co_filename] if tb is not None else []
    return bool(files) and os.path.abspath(files[-1]).startswith(_PACKAGE)


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` anywhere before a ``--`` is the global flag; it is taken out of ``argv``."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    return [a for i, a in enumerate(argv) if not (i < end and a == "--debug")], debug


def execute(prog: str, argv: Sequence[str] | None, work: Callable[[list[str]], int | None]) -> int:
    """``work(argv)`` (parse, then do) as a command: every error becomes one line on stderr and an exit
    status, unless ``--debug`` is in ``argv``. Each command module's ``main`` is this around its own work
    (:func:`command`)."""
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(work(argv) or 0)
    except SystemExit as e:  # argparse: --help (0) or a usage error, already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place every command's errors are reported
        if debug:
            raise
        print(f"{prog}: error: {describe(e)}", file=sys.stderr)
        return e.status if isinstance(e, CommandError) else 1


class Main(Protocol):
    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def command(prog: str, work: Callable[[list[str]], int | None]) -> Main:
    """A command module's ``main(argv=None) -> int``: ``work`` run by :func:`execute` as ``prog``."""

    def main(argv: Sequence[str] | None = None) -> int:
        return execute(prog, argv, work)

    main.__doc__ = f"Entry point of ``{prog}``; returns the exit status."
    return main


def run(name: str, argv: Sequence[str], debug: bool = False) -> int:
    """Run command ``name`` (a key of ``COMMANDS``) with ``argv``."""
    argv = list(argv) + (["--debug"] if debug else [])
    if name == "models":
        return execute("torchclip models", argv, _models)
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if debug or not (e.name and module_name.startswith(e.name)):
            raise
        print(f"torchclip {name}: error: the command is not available in this build ({e})", file=sys.stderr)
        return 2
    return int(module.main(argv) or 0)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: torchclip [--version] [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "torchclip <command> --help lists the options of a command.",
              f"--debug: {DEBUG_HELP} (accepted by every command)."]
    return "\n".join(lines)


def _models(argv: Sequence[str]) -> int:
    CommandParser(prog="torchclip models", description="List the model presets.").parse_args(argv)
    from .api import available_models, pretrained_models

    pretrained = pretrained_models()
    for name in available_models():
        print(f"{name:<24} {', '.join(pretrained.get(name, [])) or 'random init'}")
    return 0


def _version() -> str:
    from . import __version__

    return f"torchclip {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = _split_debug(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(_version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"torchclip: error: unknown command {name!r}{hint} (commands: {', '.join(COMMANDS)}; "
              "torchclip --help)", file=sys.stderr)
        return 2
    return run(name, rest, debug=debug)


if __name__ == "__main__":
    raise SystemExit(main())
