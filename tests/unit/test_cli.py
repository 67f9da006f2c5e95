"""Contract tests: the commands and flags users type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from swarm.client.cli import build_parser as client_parser
from swarm.coordinator.cli import build_parser as swarm_parser
from tests.conftest import LiveCoordinator


def _subcommands(parser) -> dict:  # type: ignore[no-untyped-def]
    dests = ("command", "jobs_command", "credits_command", "bench_command")
    return next(a for a in parser._actions if a.dest in dests).choices


def _flags(parser) -> set[str]:  # type: ignore[no-untyped-def]
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {"--help"}


def test_swarm_commands_and_flags() -> None:
    commands = _subcommands(swarm_parser())
    assert {"coordinator", "demo", "jobs"} <= set(commands)
    assert {"--host", "--grpc-port", "--http-port", "--data-dir", "--db"} <= _flags(
        commands["coordinator"]
    )
    assert {"--json", "--clients", "--rounds"} <= _flags(commands["demo"])
    jobs = _subcommands(commands["jobs"])
    assert {"list", "get", "create", "cancel", "pause", "resume", "checkpoints", "queue"} <= set(
        jobs
    )
    assert {"--owner", "--priority", "--set"} <= _flags(jobs["create"])
    credits = _subcommands(commands["credits"])
    assert {"show", "leaderboard", "ledger", "issue", "donate"} <= set(credits)
    benches = _subcommands(commands["bench"])
    assert {"compression", "finetune", "churn"} <= set(benches)
    assert {"--json", "--quick", "--clients", "--db", "--output"} <= _flags(benches["churn"])


def test_swarmclient_join_flags() -> None:
    join = _subcommands(client_parser())["join"]
    assert {"--coordinator", "--name", "--data-dir", "--threads"} <= _flags(join)
    assert {"--max-upload-mbps", "--max-download-mbps"} <= _flags(join)


def test_bandwidth_caps_reach_the_client_settings() -> None:
    from swarm.client.cli import _settings

    args = client_parser().parse_args(["join", "--max-upload-mbps", "2.5"])
    settings = _settings(args)
    assert (settings.max_upload_mbps, settings.max_download_mbps) == (2.5, 0.0)


@pytest.mark.parametrize("module", ["swarm.client", "swarm.coordinator"])
def test_modules_run_with_python_dash_m(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "usage:" in result.stdout


def test_invalid_port_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "swarm.coordinator", "coordinator", "--grpc-port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "grpc_port" in result.stderr and "65535" in result.stderr


def test_swarmclient_cache_show_and_clear(tmp_path: Path) -> None:
    from swarm.client.cache import BlobCache

    cache = BlobCache(tmp_path / "blobs")
    cache.put(b"z" * 2_000_000)
    (tmp_path / "identity.key").write_bytes(b"k")
    run = [sys.executable, "-m", "swarm.client", "cache"]
    shown = subprocess.run(
        [*run, "show", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "1 blobs, 2.0 MB (20 GB cap)" in shown.stdout
    cleared = subprocess.run(
        [*run, "clear", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert cleared.returncode == 0, cleared.stderr
    assert "2.0 MB freed" in cleared.stdout
    assert cache.usage().num_blobs == 0
    assert (tmp_path / "identity.key").exists()  # the volunteer's identity is not cache


def test_a_protocol_mismatch_ends_join_with_the_upgrade_command(
    live_coordinator: LiveCoordinator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from swarm.client import cli, worker

    monkeypatch.setattr(worker, "PROTOCOL_VERSION", 1)  # an old client
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # keep pytest's handlers
    argv = ["join", "--coordinator", live_coordinator.target, "--data-dir", str(tmp_path)]
    assert cli.main([*argv, "--no-live", "--threads", "1", "--insecure"]) == 2
    error = capsys.readouterr().err
    assert "protocol version 1 is not supported" in error
    assert "pip install -U swarmclient" in error
