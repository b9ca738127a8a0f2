"""Running programs: the one function through which every subprocess of tether starts.

`run` logs each command as `+ shlex.join(cmd)` at debug level, enforces a timeout by
killing the command's whole process group, can stream captured output to the log
line by line, and turns every failure into a `CommandError` that says what happened
(program not found, killed by a signal, non-zero exit, timeout), shows the tail of
what the program wrote to stderr, and gives the command line to paste to reproduce
it. Nothing in tether calls `subprocess` directly, and nothing uses a shell.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tether.errors import CommandError, CommandTimeoutError

log = logging.getLogger("tether")
# Output lines of commands run with `log_output=True` (sandboxed steps), so that a
# front end can show or hide them separately from tether's own messages.
output_log = logging.getLogger("tether.output")

# How long to keep reading a command's pipes after it exited: a child that it left
# running in the background may hold them open forever.
PIPE_DRAIN_GRACE = 1.0
STDERR_TAIL_LINES = 20


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = False,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    log_output: bool = False,
    interactive: bool = False,
    what: str | None = None,
    shown: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` and wait for it.

    `capture` returns stdout and stderr as text (otherwise they go to tether's own and
    the result holds empty strings); `log_output` also logs each line on the
    `tether.output` logger. Without `input`, stdin is /dev/null. `env` replaces the
    environment. Past `timeout` seconds the command's process group is killed and
    `CommandTimeoutError` raised, whatever `check` says; a missing program raises
    `CommandError` with return code 127. `interactive` leaves the terminal to the
    command (a debug shell): same process group, inherited stdin, no capture.
    `what` names the command in error messages (default: the program's name);
    `shown` is the command their reproducer gives when `cmd` only wraps it (a
    launcher that sets limits up).
    """
    argv = [os.fspath(arg) for arg in cmd]
    if not argv:
        raise ValueError("run() needs a command")
    if interactive and (capture or log_output or input is not None):
        raise ValueError("an interactive command cannot have its input or output captured")
    subject = what or os.path.basename(argv[0])
    reproduce = [os.fspath(arg) for arg in shown] if shown is not None else argv
    log.debug("+ %s", shlex.join(argv))

    pipe_output = capture or log_output
    try:
        process = subprocess.Popen(
            argv,
            stdin=None if interactive else subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_output else None,
            stderr=subprocess.PIPE if pipe_output else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            # Its own process group, so a timeout can kill everything it started;
            # an interactive command must stay in the terminal's foreground group.
            process_group=None if interactive else 0,
        )
    except FileNotFoundError as e:
        if cwd is not None and not os.path.isdir(cwd):
            raise CommandError(f"cannot run {subject}: working directory {cwd} does not exist") from e
        message = f"{subject}: program {argv[0]!r} not found"
        raise CommandError(_with_reproducer(message, reproduce, env, cwd), returncode=127) from e
    except PermissionError as e:
        message = f"{subject}: program {argv[0]!r} cannot be executed ({e.strerror})"
        raise CommandError(_with_reproducer(message, reproduce, env, cwd), returncode=126) from e

    encoded_input = input.encode() if input is not None else None
    if interactive:
        stdout, stderr, timed_out = _wait_interactive(process, timeout)
    else:
        stdout, stderr, timed_out = _communicate(process, encoded_input, timeout, log_output)
    returncode = process.returncode
    result = subprocess.CompletedProcess(
        argv,
        returncode,
        stdout.decode(errors="replace") if capture else "",
        stderr.decode(errors="replace") if capture else "",
    )

    if timed_out:
        assert timeout is not None
        message = f"{subject} timed out after {_seconds(timeout)} and was killed"
        raise CommandTimeoutError(
            _with_reproducer(message, reproduce, env, cwd, stdout, stderr, pipe_output),
            returncode=returncode,
            timeout=timeout,
        )
    if check and returncode != 0:
        message = f"{subject} {describe_returncode(returncode)}"
        raise CommandError(
            _with_reproducer(message, reproduce, env, cwd, stdout, stderr, pipe_output), returncode=returncode
        )
    return result


def describe_returncode(returncode: int) -> str:
    """How a process ended, in words: 'exited with code 2', 'was killed by SIGKILL'."""
    if returncode < 0:
        return f"was killed by {_signal_name(-returncode)}"
    if returncode == 127:
        return "exited with code 127 (command not found)"
    if 128 < returncode < 128 + signal.NSIG:
        # Shells, and bubblewrap for the step it runs, report a child's death by
        # signal N as exit code 128+N.
        return f"exited with code {returncode} (128+{_signal_name(returncode - 128)}: killed by a signal)"
    return f"exited with code {returncode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _seconds(timeout: float) -> str:
    return f"{timeout:g} s"


def _communicate(
    process: subprocess.Popen[bytes], input: bytes | None, timeout: float | None, log_output: bool
) -> tuple[bytes, bytes, bool]:
    """Feed input, collect output and wait, killing the process group past the timeout.

    Like `Popen.communicate`, but it stops reading shortly after the process exited
    (instead of waiting for every holder of the pipes to close them), logs lines as
    they come, and kills the whole group rather than only the direct child.
    """
    deadline = time.monotonic() + timeout if timeout is not None else None
    buffers: dict[int, bytearray] = {}
    partial_lines: dict[int, bytearray] = {}
    timed_out = False
    exited_at: float | None = None
    stdout_fd = process.stdout.fileno() if process.stdout is not None else -1
    stderr_fd = process.stderr.fileno() if process.stderr is not None else -1
    pidfd = os.pidfd_open(process.pid)
    selector = selectors.DefaultSelector()
    try:
        selector.register(pidfd, selectors.EVENT_READ)
        for fd in (stdout_fd, stderr_fd):
            if fd >= 0:
                buffers[fd] = bytearray()
                partial_lines[fd] = bytearray()
                selector.register(fd, selectors.EVENT_READ)
        pending_input = memoryview(input or b"")
        stdin_fd = process.stdin.fileno() if process.stdin is not None else -1
        if process.stdin is not None:
            os.set_blocking(stdin_fd, False)
            selector.register(stdin_fd, selectors.EVENT_WRITE)

        while True:
            now = time.monotonic()
            if exited_at is not None:
                open_pipes = [fd for fd in buffers if _registered(selector, fd)]
                if not open_pipes or now - exited_at >= PIPE_DRAIN_GRACE:
                    break
                wait: float | None = PIPE_DRAIN_GRACE - (now - exited_at)
            elif deadline is not None and not timed_out:
                if now >= deadline:
                    _kill_group(process)
                    timed_out = True
                    continue
                wait = deadline - now
            else:
                wait = None

            for key, _ in selector.select(wait):
                fd = key.fd
                if fd == pidfd:
                    process.wait()
                    exited_at = time.monotonic()
                    selector.unregister(pidfd)
                elif fd == stdin_fd:
                    try:
                        written = os.write(fd, pending_input[:65536])
                    except BrokenPipeError:
                        written = len(pending_input)
                    pending_input = pending_input[written:]
                    if not pending_input:
                        selector.unregister(fd)
                        assert process.stdin is not None
                        process.stdin.close()
                else:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        selector.unregister(fd)
                        if log_output:
                            _log_lines(partial_lines[fd], final=True)
                        continue
                    buffers[fd] += chunk
                    if log_output:
                        partial_lines[fd] += chunk
                        _log_lines(partial_lines[fd], final=False)
    finally:
        if process.returncode is None:
            # Interrupted (KeyboardInterrupt, an error above): do not leave it running.
            _kill_group(process)
            process.wait()
        selector.close()
        os.close(pidfd)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()

    if log_output:
        for pending in partial_lines.values():
            _log_lines(pending, final=True)
    return bytes(buffers.get(stdout_fd, b"")), bytes(buffers.get(stderr_fd, b"")), timed_out


def _wait_interactive(process: subprocess.Popen[bytes], timeout: float | None) -> tuple[bytes, bytes, bool]:
    # The terminal's Ctrl-C and Ctrl-\ are meant for the interactive command, which
    # shares our process group: tether must not die of them meanwhile.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        process.wait(timeout)
        return b"", b"", False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return b"", b"", True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _registered(selector: selectors.BaseSelector, fd: int) -> bool:
    try:
        selector.get_key(fd)
    except KeyError:
        return False
    return True


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _log_lines(pending: bytearray, *, final: bool) -> None:
    while (end := pending.find(b"\n")) >= 0:
        output_log.info("%s", pending[:end].decode(errors="replace"))
        del pending[: end + 1]
    if final and pending:
        output_log.info("%s", pending.decode(errors="replace"))
        pending.clear()


def _with_reproducer(
    message: str,
    argv: list[str],
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
    stdout: bytes = b"",
    stderr: bytes = b"",
    captured: bool = False,
) -> str:
    parts = [message + "."]
    if captured:
        # Some programs (Ansible) report errors on stdout only.
        tail_source, stream = (stderr, "stderr") if stderr.strip() else (stdout, "stdout")
        tail = tail_source.decode(errors="replace").rstrip().splitlines()[-STDERR_TAIL_LINES:]
        if tail:
            parts.append(f"Last lines of its {stream}:")
            parts.extend(f"  {line}" for line in tail)
    parts.append(f"To reproduce: {reproducer(argv, env, cwd)}")
    return "\n".join(parts)


def reproducer(
    argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> str:
    """A shell command line equivalent to running `argv` with `env` in `cwd`."""
    prefix: list[str] = []
    if env is not None:
        # Only the difference with the current environment, to keep it pasteable.
        unset = [f"-u{name}" for name in sorted(os.environ) if name not in env]
        changed = [f"{name}={value}" for name, value in sorted(env.items()) if os.environ.get(name) != value]
        if unset or changed:
            prefix = ["env", *unset, *changed]
    line = shlex.join([*prefix, *argv])
    if cwd is not None:
        line = f"cd {shlex.quote(os.fspath(Path(cwd)))} && {line}"
    return line
