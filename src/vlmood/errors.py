"""The library's exception base class.

Every error that a user's input or environment can cause derives from :class:`VlmoodError`;
the CLI catches exactly this base class at its boundary and prints one line
(``vlmood CMD: error: MESSAGE``) with the exit status of the error (2: the command or its
inputs are wrong, fix and rerun; 1: the run failed at run time). Anything else is a bug and
keeps its traceback.

Subclasses keep their historical builtin bases (``DataError`` is still a ``ValueError``,
``ModelLoadError`` a ``RuntimeError``...) so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations


class VlmoodError(Exception):
    """Base class of vlmood's errors; ``exit_code`` is the CLI exit status (2 usage, 1 runtime)."""

    exit_code: int = 2


class UsageError(VlmoodError, ValueError):
    """A command-line option or API argument is wrong; the message names it and the fix."""

    exit_code = 2


class RunError(VlmoodError, RuntimeError):
    """A run failed at run time (device, disk, interrupted); the message says what to do."""

    exit_code = 1


class RunInterrupted(RunError):
    """The run was interrupted (Ctrl-C / SIGTERM); completed work is kept and a rerun resumes."""
