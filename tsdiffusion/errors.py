"""The project's errors, and how the ``tsdiffusion`` command shows them.

Every error tsdiffusion raises on purpose derives from :class:`TSDiffusionError`; each class also keeps the
builtin base it always had (``ValueError`` or ``RuntimeError``), so ``except ValueError`` still catches it.

=========================  ===================================================================  ====
class                      raised when                                                          exit
=========================  ===================================================================  ====
``DataError``              a data file, DataFrame or array cannot be used as given (its         2
                           subclasses: ``FrameDataError``, ``TSFormatError``,
                           ``GluonTSFormatError``)
``DataSourceError``        a data file is missing, unreadable or fails its checksum (also       2
                           ``DataFileNotFoundError``, ``RecordParseError``)
``ConfigError``            an argument or config value that cannot work (also ``SpecError``,    2
                           ``FrequencyError``, ``ContextTooLongError``)
``BatchError``             a batch does not follow :class:`tsdiffusion.batch.TSBatch`           2
``CheckpointError``        a checkpoint or state dict that cannot be loaded into the model      2
``SchedulerError``         the job scheduler (SLURM: ``SlurmError``) refused a job              2
``TrainingDivergedError``  the training loss became non-finite or exploded                      1
``SweepLockedError``       another sweep process works on the same folder                       1
=========================  ===================================================================  ====

Exit code 2: what was given (a file, a config value, a command-line option) is wrong; fix it and rerun.
Exit code 1: the run itself failed. Other exceptions are bugs and keep their traceback (exit code 1).

:func:`run_cli` / :func:`cli_errors` turn a command's errors into ``error: <message>`` (one line) and an
optional ``hint: ...`` line on stderr; ``--debug`` anywhere on the command line (removed before the command
parses its arguments) or ``TSDIFFUSION_DEBUG=1`` shows the traceback instead. This module imports only the
standard library, so every module of the project can import it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_ENV = "TSDIFFUSION_DEBUG"
#: exit status of an input error (data, config, batch, checkpoint) and of any other project error
EXIT_INPUT, EXIT_FAILURE = 2, 1


class TSDiffusionError(Exception):
    """Base of the project's errors: a message a user can act on, and an optional ``hint`` (what to try)."""

    exit_code: int = EXIT_FAILURE
    hint: str | None = None

    def __init__(self, *args: Any, hint: str | None = None):
        super().__init__(*args)
        if hint is not None:
            self.hint = hint


class InputError(TSDiffusionError):
    """What the user gave (a file, a config value, an option) is wrong: exit code 2."""

    exit_code = EXIT_INPUT


class DataError(InputError, ValueError):
    """User data (a file's content, a DataFrame, an array) that cannot be used as given; the message names the
    file and, where known, the line and column."""


class DataSourceError(InputError, RuntimeError):
    """A data file is missing, unreadable or fails its checksum."""


class DataFileNotFoundError(DataSourceError, FileNotFoundError):
    """A data file that does not exist (also a ``FileNotFoundError``)."""


class ConfigError(InputError, ValueError):
    """An argument or config value that cannot work (out of range, unknown name, inconsistent sizes)."""


class BatchError(InputError, ValueError):
    """A batch does not follow :class:`tsdiffusion.batch.TSBatch`; the message names the field and what was
    expected."""


class CheckpointError(InputError, ValueError):
    """A checkpoint or state dict that cannot be loaded: missing, not a checkpoint, or for another model."""


class TrainingDivergedError(TSDiffusionError, RuntimeError):
    """The training loss became non-finite or exploded (see ``DiffusionTask(divergence_factor=...)``)."""


class SchedulerError(TSDiffusionError, RuntimeError):
    """The job scheduler (SLURM) refused a command or could not be asked; the message is one line with its
    own words (exit code 2: usually an option it does not accept)."""

    exit_code = EXIT_INPUT


class SweepLockedError(TSDiffusionError, RuntimeError):
    """Another sweep process works on the same folder."""


# -- the command line ---------------------------------------------------------------------------------


def debug_requested(argv: Sequence[str]) -> bool:
    """``--debug`` on the command line, or ``TSDIFFUSION_DEBUG`` set to anything but ``""``/``0``/``false``."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return DEBUG_FLAG in argv or env not in ("", "0", "false", "no")


def format_error(err: TSDiffusionError) -> str:
    """``error: <message>`` on one line, plus ``hint: <hint>`` when the error has one."""
    message = " ".join(str(err).split()) or type(err).__name__
    lines = [f"error: {message}"]
    if err.hint:
        lines.append(f"hint: {' '.join(err.hint.split())}")
    return "\n".join(lines)


def project_error(err: BaseException) -> TSDiffusionError | None:
    """``err`` or the project error it was raised from (``raise ... from err``), if any. An exception raised
    while handling one (``__context__`` only) is a different failure and keeps its traceback."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, TSDiffusionError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def run_cli(main_fn: Callable[[list[str] | None], Any], argv: Sequence[str] | None = None) -> Any:
    """Run ``main_fn`` without ``--debug`` in its arguments: ``main_fn(list)`` for a given ``argv``; for
    ``argv=None`` the flag is removed from ``sys.argv`` itself and ``main_fn(None)`` reads it there (as
    LightningCLI does, and as DDP re-runs it for the other ranks). ``--debug`` also sets ``TSDIFFUSION_DEBUG=1``
    so that child processes show tracebacks too.

    A project error becomes one line on stderr (:func:`format_error`) and ``SystemExit(err.exit_code)``, unless
    debugging; any other exception propagates with its traceback.
    """
    given = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(given)
    if DEBUG_FLAG in given:
        os.environ[DEBUG_ENV] = "1"
    args = [a for a in given if a != DEBUG_FLAG]
    if argv is None:
        sys.argv[1:] = args
    call_args = None if argv is None else args
    if debug:
        return main_fn(call_args)
    try:
        return main_fn(call_args)
    except Exception as exc:
        err = project_error(exc)
        if err is None:
            raise
        sys.stdout.flush()
        print(format_error(err), file=sys.stderr, flush=True)
        raise SystemExit(err.exit_code) from None


def cli_errors(main_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator form of :func:`run_cli` for an entry point ``main(argv=None)``."""

    @functools.wraps(main_fn)
    def main(argv: Sequence[str] | None = None) -> Any:
        return run_cli(main_fn, argv)

    return main


def failure_line(log_tail: str) -> str:
    """The one line that says why a command failed, from the end of its output: the last ``error: ...`` line
    (this module's, or ``<prog>: error: ...`` of an argument parser) after the last traceback, else the last
    non-empty line (a traceback's exception line)."""
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("error: ") or ": error: " in line:
            return line
        if line.startswith("Traceback (most recent call last)"):
            break
    return lines[-1] if lines else ""
