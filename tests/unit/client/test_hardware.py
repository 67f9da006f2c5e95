"""Hardware detection and the cached compute benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from swarm.client import hardware
from swarm.client.hardware import (
    cached_download_rate,
    detect_hardware,
    measure_download,
    measure_flops,
    profile_with_benchmark,
)


@pytest.fixture
def fake_benchmark(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def measure(duration_s: float = 0.3, size: int = 256) -> float:
        calls.append(1)
        return 1.5e9 * len(calls)

    monkeypatch.setattr(hardware, "measure_flops", measure)
    return calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="expects a machine without CUDA")
def test_detect_hardware_on_a_cpu_machine() -> None:
    profile = detect_hardware()
    assert profile.device_type in {"cpu", "mps"}
    assert profile.memory_bytes > 0
    assert profile.cpu_cores >= 1
    assert profile.num_devices == 1
    assert profile.platform


def test_measure_flops_is_positive() -> None:
    assert measure_flops(duration_s=0.02, size=32) > 0


def test_benchmark_is_cached_and_reused(tmp_path: Path, fake_benchmark: list[int]) -> None:
    cache_file = tmp_path / "state" / "benchmark.json"
    first = profile_with_benchmark(cache_file)
    assert fake_benchmark == [1]
    assert first.flops_per_s == 1.5e9
    assert json.loads(cache_file.read_text())["flops_per_s"] == 1.5e9

    second = profile_with_benchmark(cache_file)
    assert fake_benchmark == [1]
    assert second.flops_per_s == 1.5e9
    assert second == first


def test_profile_keeps_the_detected_hardware(tmp_path: Path, fake_benchmark: list[int]) -> None:
    profile = profile_with_benchmark(tmp_path / "benchmark.json")
    detected = detect_hardware()
    assert profile.device_type == detected.device_type
    assert profile.cpu_cores == detected.cpu_cores
    assert profile.memory_bytes == detected.memory_bytes


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"key": "another-machine", "flops_per_s": 1.0}),
        json.dumps({"flops_per_s": 1.0}),
    ],
)
def test_stale_or_broken_cache_is_measured_again(
    tmp_path: Path, fake_benchmark: list[int], content: str
) -> None:
    cache_file = tmp_path / "benchmark.json"
    cache_file.write_text(content)
    assert profile_with_benchmark(cache_file).flops_per_s == 1.5e9
    assert fake_benchmark == [1]
    assert json.loads(cache_file.read_text())["flops_per_s"] == 1.5e9


def test_benchmark_is_measured_again_when_torch_threads_change(
    tmp_path: Path, fake_benchmark: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_file = tmp_path / "benchmark.json"
    profile_with_benchmark(cache_file)
    threads = torch.get_num_threads()
    monkeypatch.setattr(hardware.torch, "get_num_threads", lambda: threads + 1)
    assert profile_with_benchmark(cache_file).flops_per_s == 3.0e9
    assert fake_benchmark == [1, 1]


def test_the_download_rate_is_measured_once_per_coordinator(tmp_path: Path) -> None:
    cache = tmp_path / "benchmark.json"
    assert cached_download_rate(cache, "a:1") == 0.0
    rate = measure_download(iter([b"x" * 100_000] * 5), cache, "a:1")
    assert rate > 0
    assert cached_download_rate(cache, "a:1") == rate
    assert cached_download_rate(cache, "b:2") == 0.0  # another coordinator, another link
    assert measure_download(iter([]), cache, "b:2") == 0.0  # nothing arrived: nothing cached
    assert cached_download_rate(cache, "b:2") == 0.0
