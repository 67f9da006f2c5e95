"""The volunteer's limits as the worker applies them: memory offered, schedule, idle only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from swarm.client.settings import ClientSettings
from swarm.client.worker import Worker
from swarm.protocol.messages import HardwareProfile

MACHINE = HardwareProfile(
    device_type="cpu", device_name="cpu", memory_bytes=16 * 10**9, cpu_cores=8, platform="linux"
)


def _worker(tmp_path: Path, **settings: object) -> Worker:
    return Worker(ClientSettings(data_dir=tmp_path, **settings))  # type: ignore[arg-type]


def test_max_memory_caps_what_the_coordinator_is_told(tmp_path: Path) -> None:
    assert _worker(tmp_path, max_memory_gb=1.5)._limit_memory(MACHINE).memory_bytes == 1.5e9
    assert _worker(tmp_path, max_memory_gb=64)._limit_memory(MACHINE) == MACHINE  # more than it has
    assert _worker(tmp_path)._limit_memory(MACHINE) == MACHINE


def _window_around_now(offset_min: int) -> str:
    now = time.localtime()
    start = (now.tm_hour * 60 + now.tm_min + offset_min) % 1440
    end = (start + 5) % 1440
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def test_outside_its_schedule_the_worker_waits_and_says_so(tmp_path: Path) -> None:
    later = _worker(tmp_path, schedule=_window_around_now(60))
    assert "outside the schedule" in later._unavailable()
    now = _worker(tmp_path, schedule=_window_around_now(-1))
    assert now._unavailable() == ""


def test_idle_only_waits_while_other_programs_are_busy(tmp_path: Path) -> None:
    worker = _worker(tmp_path, idle_only=True, idle_busy_share=0.5)
    shares = iter([0.9, 0.1])
    worker._load.others_share = lambda: next(shares)  # type: ignore[method-assign]
    assert "the machine is in use (other programs: 90% of the CPU)" in worker._unavailable()
    assert worker._unavailable() == ""


def test_a_bad_schedule_is_refused_when_the_settings_are_read(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="22:00-07:00"):
        ClientSettings(data_dir=tmp_path, schedule="tonight")
