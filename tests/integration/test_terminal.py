"""What a volunteer sees: `swarmclient join` in a real pseudo-terminal, with a real coordinator."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from contextlib import suppress
from pathlib import Path

import pytest

from tests.integration.test_training import running_swarm

pytestmark = pytest.mark.integration

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")


class Terminal:
    """A child process on a pseudo-terminal, and everything it has printed, escapes removed."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a volunteer's shell running the command
            os.execvpe(argv[0], argv, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.raw = b""

    @property
    def screen(self) -> str:
        return _ANSI.sub(b"", self.raw).decode("utf-8", "replace")

    def read_until(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.screen):
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {pattern!r}; the screen:\n{self.screen[-3000:]}"
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    self.raw += os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    break
        return self.screen

    def wait(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                with suppress(OSError):  # the child closed the terminal
                    self.raw += os.read(self.fd, 65536)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"still running after {timeout_s}s:\n{self.screen[-3000:]}")


def test_join_shows_a_live_panel_and_ctrl_c_hands_the_task_back(tmp_path: Path) -> None:
    with running_swarm(tmp_path, num_clients=0) as swarm:
        http = swarm.http
        data_dir = tmp_path / "volunteer"
        argv = [sys.executable, "-m", "swarm.client", "join", "--coordinator", swarm.target]
        argv += ["--name", "pty-volunteer", "--data-dir", str(data_dir), "--threads", "1"]
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        terminal = Terminal(argv, env)
        # Before any job: connected, idle, and it says why.
        screen = terminal.read_until(r"idle\s+no tasks are waiting", timeout_s=90)
        assert "swarmclient · pty-volunteer (wk-" in screen
        assert "credits" in screen and "granted" in screen and "latency" in screen
        # Before any task, the coordinator knows this link from the client's probe download.
        (worker,) = http.get("/v1/swarm/workers").json()["data"]
        assert worker["download_bytes_per_s"] > 0, worker

        # Tasks of several seconds, so the status check (a new process) lands mid-training.
        hyperparameters = {"num_rounds": 3, "inner_steps": 4000, "batch_size": 4, "seq_len": 32}
        response = http.post(
            "/v1/fine_tuning/jobs",
            json={"model": "micro-llama", "hyperparameters": {**hyperparameters, "min_clients": 1}},
        )
        assert response.status_code == 200, response.text
        screen = terminal.read_until(r"\d+/4000 steps", timeout_s=120)
        assert "training" in screen and "loss" in screen

        # From another terminal: what is it doing? (The status file follows within a second;
        # the terminal is read in between, so the client never blocks on a full one.)
        for _ in range(5):
            status = subprocess.run(
                [sys.executable, "-m", "swarm.client", "status", "--data-dir", str(data_dir)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert status.returncode == 0, status.stdout + status.stderr
            if "/4000 steps" in status.stdout:
                break
            terminal.read_until(r"\d+/4000 steps", timeout_s=30)
        assert "pty-volunteer" in status.stdout and "/4000 steps" in status.stdout, status.stdout

        os.write(terminal.fd, b"\x03")  # Ctrl+C, through the terminal's line discipline
        assert terminal.wait(timeout_s=60) == 0
        assert "handing back the current task" in terminal.screen
        assert "stopped" in terminal.screen
        leases = http.get("/v1/swarm/workers").json()["data"]
        assert [w["name"] for w in leases] == ["pty-volunteer"]
    after = subprocess.run(
        [sys.executable, "-m", "swarm.client", "status", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert after.returncode == 3 and "not running" in after.stdout
