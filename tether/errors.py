"""The exception hierarchy of tether and the exit code each one maps to.

The library raises; only the CLI turns an exception into a message and an exit
code. Each class also inherits the builtin it resembles so that callers who do
not know tether can still catch it sensibly.
"""

from __future__ import annotations

from pathlib import Path


class TetherError(Exception):
    """Something tether could not do; exit code 1 unless a subclass says otherwise."""

    exit_code = 1


class UsageError(TetherError, ValueError):
    """Bad command-line usage or invalid input (exit 2); nothing was changed."""

    exit_code = 2


class ManifestError(UsageError):
    """An error in a bundle's files, located by file, line and key."""

    def __init__(self, file: Path | str, line: int | None, key: str | None, message: str) -> None:
        self.file = Path(file)
        self.line = line
        self.key = key
        self.message = message
        where = str(self.file)
        if line is not None:
            where += f":{line}"
        if key:
            where += f":{key}"
        super().__init__(f"{where}: {message}")


class NotBoundError(TetherError, LookupError):
    """The bundle is bound to no OS commit that can be found (exit 3)."""

    exit_code = 3


class VerificationError(TetherError, PermissionError):
    """A signature, ref binding, integrity or downgrade check failed (exit 4)."""

    exit_code = 4


class LockTimeoutError(TetherError, TimeoutError):
    """Another operation held the sysroot lock past the timeout (exit 6)."""

    exit_code = 6


class CommandError(TetherError, RuntimeError):
    """A program tether ran failed; the message says how and how to reproduce it."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class StepFailedError(TetherError, RuntimeError):
    """A bundle step (hook, playbook) failed; the new deployment was discarded."""


class NoUpdateError(TetherError):
    """`upgrade --check`/`--preview` found nothing to do (exit 77)."""

    exit_code = 77


class CommandTimeoutError(CommandError):
    """A program ran past its timeout and was killed with everything it started."""

    def __init__(self, message: str, returncode: int | None = None, *, timeout: float) -> None:
        super().__init__(message, returncode)
        self.timeout = timeout
