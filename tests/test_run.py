from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from tether.edge.run import describe_returncode, reproducer, run
from tether.errors import CommandError, CommandTimeoutError


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def _wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_captures_output_and_returns_the_exit_code() -> None:
    result = run(["sh", "-c", "echo out; echo err >&2; exit 4"], capture=True, check=False)
    assert result.returncode == 4
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.args == ["sh", "-c", "echo out; echo err >&2; exit 4"]


def test_accepts_paths_and_feeds_input() -> None:
    assert run([Path("/bin/cat")], input="line\n" * 50_000, capture=True).stdout == "line\n" * 50_000


def test_stdin_is_empty_without_input() -> None:
    assert run(["cat"], capture=True, timeout=10).stdout == ""


def test_env_replaces_the_environment_and_cwd_is_used(tmp_path: Path) -> None:
    result = run(["sh", "-c", 'echo "$ONLY:$HOME"; pwd'], env={"ONLY": "yes"}, cwd=tmp_path, capture=True)
    assert result.stdout == f"yes:\n{tmp_path}\n"


def test_logs_the_command_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tether"):
        run(["sh", "-c", "exit 0"])
    assert "+ sh -c 'exit 0'" in caplog.messages


def test_logs_output_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tether.output"):
        result = run(
            ["sh", "-c", "echo one; printf 'two\\nthree'; echo four >&2"], capture=True, log_output=True
        )
    assert result.stdout == "one\ntwo\nthree"
    assert sorted(r.getMessage() for r in caplog.records if r.name == "tether.output") == [
        "four",
        "one",
        "three",
        "two",
    ]


def test_program_not_found() -> None:
    with pytest.raises(CommandError) as error:
        run(["tether-no-such-program", "--flag"])
    assert error.value.returncode == 127
    assert "not found" in str(error.value)
    assert "To reproduce: tether-no-such-program --flag" in str(error.value)


def test_missing_working_directory(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"working directory .* does not exist"):
        run(["true"], cwd=tmp_path / "missing")


def test_non_zero_exit_names_the_code_shows_stderr_and_how_to_reproduce() -> None:
    with pytest.raises(CommandError) as error:
        run(["sh", "-c", "echo first >&2; echo broken thing >&2; exit 3"], capture=True)
    message = str(error.value)
    assert error.value.returncode == 3
    assert "sh exited with code 3" in message
    assert "broken thing" in message
    assert "To reproduce: sh -c 'echo first >&2; echo broken thing >&2; exit 3'" in message


def test_stdout_tail_is_shown_when_stderr_is_empty() -> None:
    with pytest.raises(CommandError, match="Last lines of its stdout:\n  fatal: on stdout"):
        run(["sh", "-c", "echo 'fatal: on stdout'; exit 2"], capture=True)


def test_killed_by_a_signal_names_it() -> None:
    with pytest.raises(CommandError) as error:
        run(["sh", "-c", "kill -TERM $$"])
    assert error.value.returncode == -15
    assert "killed by SIGTERM" in str(error.value)


def test_shell_style_signal_exit_code_is_explained() -> None:
    assert describe_returncode(137) == "exited with code 137 (128+SIGKILL: killed by a signal)"
    assert describe_returncode(127) == "exited with code 127 (command not found)"
    assert describe_returncode(1) == "exited with code 1"
    assert describe_returncode(-9) == "was killed by SIGKILL"


def test_check_false_returns_failures() -> None:
    assert run(["false"], check=False).returncode == 1


def test_reproducer_shows_environment_changes_and_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEPT", "1")
    monkeypatch.setenv("DROPPED", "1")
    env = {name: value for name, value in os.environ.items() if name != "DROPPED"} | {"ADDED": "a b"}
    assert reproducer(["ostree", "log", "x"], env, "/srv/my repo") == (
        "cd '/srv/my repo' && env -uDROPPED 'ADDED=a b' ostree log x"
    )
    with pytest.raises(CommandError, match=r"To reproduce: env .*ADDED='?a b"):
        run(["false"], env=env)


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as error:
        run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; sleep 300"], capture=True, timeout=0.5)
    assert time.monotonic() - started < 5
    assert "timed out after 0.5 s and was killed" in str(error.value)
    assert error.value.timeout == 0.5
    assert _wait_gone(int(pidfile.read_text()))


def test_timeout_applies_without_capture() -> None:
    with pytest.raises(CommandTimeoutError):
        run(["sleep", "300"], timeout=0.3)


def test_background_child_holding_the_pipes_does_not_block() -> None:
    started = time.monotonic()
    result = run(["sh", "-c", "sleep 300 & echo $!"], capture=True, timeout=60)
    try:
        assert time.monotonic() - started < 10
    finally:
        os.kill(int(result.stdout), 9)


def test_interactive_cannot_capture() -> None:
    with pytest.raises(ValueError):
        run(["true"], interactive=True, capture=True)
