"""The ``vlmood`` command line.

A package with one module per command group; each turns arguments into the run layer's inputs
and calls it, nothing more:

- ``_common``  shared options (model, data, extraction, ``--label``), the help formatter,
  device/precision checks, arguments -> sets / EvalOptions / extraction options
- ``evaluate`` ``eval``, ``cache``
- ``fit``      ``fit``, ``study``
- ``attack``   ``attack``
- ``zoo``      ``zoo``
- ``pretrain`` ``pretrain``
- ``report``   ``report``, ``demo``
- ``info``     ``models``, ``scores``, ``methods``
- ``data``     ``data check|list|prepare|sources|example``

``main`` (here) is the one error handler. Built on the standard library's ``argparse``: it is
already what the command was written in, it adds no dependency (click and typer would be new
install requirements, typer pulling in click, rich and shellingham), and what this command needs
it does directly: nested subcommands (``data prepare``), repeatable options (``--ood``,
``--score``), options shared between commands, defaults in ``--help`` through its formatter
class, and ``torchrun -m vlmood.cli``. Typer's type-hint signatures would not remove the
translation layer (options still map onto ``EvalOptions``/``TrainConfig``), and click's
decorator style would spread each command's options across its function signature.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from vlmood.cli._common import HelpFormatter, parse_score_arg

__all__ = ["build_parser", "main", "parse_score_arg"]

log = logging.getLogger("vlmood")


def _version() -> str:
    from vlmood import __version__

    return f"vlmood {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The ``vlmood`` parser: every subcommand, each with its function in ``args.func``."""
    from vlmood.cli import attack, data, evaluate, fit, info, pretrain, report, zoo
    from vlmood.cli._common import VERBOSE_HELP

    ap = argparse.ArgumentParser(
        prog="vlmood",
        description="OOD detection and adaptation for CLIP-style vision-language models.",
        formatter_class=HelpFormatter,
    )
    ap.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    ap.add_argument("--version", action="version", version=_version(), help="print the version and exit")
    sub = ap.add_subparsers(dest="cmd", required=True)
    evaluate.add_parsers(sub)  # eval, cache
    pretrain.add_parsers(sub)
    report.add_parsers(sub)  # report, demo
    fit.add_parsers(sub)  # fit, study
    attack.add_parsers(sub)
    zoo.add_parsers(sub)
    info.add_parsers(sub)  # models, scores, methods
    data.add_parsers(sub)
    return ap


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` of every command must be a folder (or not exist yet): checked before any work."""
    from vlmood.utils import check_folder_path

    if getattr(args, "out", None):
        check_folder_path(args.out)


_RESUME_HINT = {
    "fit": "rerun with --resume to continue from the last finished epoch",
    "pretrain": "rerun with --resume to continue from the last finished epoch",
    "study": "rerun the same command: finished pieces are reused and trainings resume",
    "zoo": "rerun the same command: models already evaluated are reused",
    "attack": "rerun the same command: finished batches are kept and the attack resumes",
    "cache": "rerun the same command: finished feature chunks are reused",
    "eval": "rerun the same command: finished feature chunks are reused",
}


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _silence_stdout() -> None:
    """After a closed pipe (``vlmood data list | head``), send further output nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the ``vlmood`` command; returns the exit status.

    Every library error (``vlmood.errors.VlmoodError``) ends in one line on stderr,
    ``vlmood CMD: error: MESSAGE``, with status 2 (fix the command or its inputs) or 1 (the run
    failed); Ctrl-C/SIGTERM end in one line saying how to resume (status 1); a closed output
    pipe ends quietly. ``-v`` (before or after the subcommand) shows tracebacks.
    """
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("vlmood").setLevel(logging.DEBUG if verbose else logging.INFO)
    from vlmood.errors import VlmoodError

    def fail(message: str, code: int) -> int:
        print(f"vlmood {args.cmd}: {message}", file=sys.stderr)
        return code

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (main() called from a library thread)
        pass
    try:
        _check_out(args)
        return args.func(args)
    except VlmoodError as e:
        if verbose:
            raise
        return fail(f"error: {e}", e.exit_code)
    except KeyboardInterrupt:
        hint = _RESUME_HINT.get(args.cmd, "rerun the same command")
        return fail(f"interrupted; completed work is kept, {hint}", 1)
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as e:  # disk full, permissions, a file that vanished: name it, no traceback
        if verbose:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        fix = "free disk space or write elsewhere" if e.errno == 28 else "check the path and its permissions"
        return fail(f"error: {e.strerror or e}{where}; {fix}", 1)
    except ValueError as e:  # a user-input check not yet converted to a VlmoodError
        if verbose:
            raise
        return fail(f"error: {e}", 2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
