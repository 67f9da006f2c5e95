"""What this machine has: accelerator, memory, cores, and a quick compute benchmark."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from swarm.protocol.messages import HardwareProfile

logger = logging.getLogger(__name__)


def detect_hardware() -> HardwareProfile:
    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        kind = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        return HardwareProfile(
            device_type=kind,
            device_name=props.name,
            num_devices=torch.cuda.device_count(),
            memory_bytes=props.total_memory,
            cpu_cores=cores,
            platform=platform.platform(),
        )
    memory = (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    )
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return HardwareProfile(
            device_type="mps",
            device_name="Apple GPU",
            memory_bytes=memory,
            cpu_cores=cores,
            platform=platform.platform(),
        )
    return HardwareProfile(
        device_type="cpu",
        device_name=platform.processor() or "cpu",
        memory_bytes=memory,
        cpu_cores=cores,
        platform=platform.platform(),
    )


def measure_flops(duration_s: float = 0.3, size: int = 256) -> float:
    """Dense float32 matmul throughput on the CPU, in FLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    runs = 0
    began = time.perf_counter()
    while time.perf_counter() - began < duration_s:
        torch.mm(a, b)
        runs += 1
    return 2.0 * size**3 * runs / (time.perf_counter() - began)


def _cached(cache_file: Path) -> dict[str, object]:
    try:
        values = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def cached_download_rate(cache_file: Path, coordinator: str) -> float:
    """The download rate measured from `coordinator` before, in bytes/s (0: never)."""
    rates = _cached(cache_file).get("download_bytes_per_s")
    rate = rates.get(coordinator, 0.0) if isinstance(rates, dict) else 0.0
    return float(rate) if isinstance(rate, int | float) and rate > 0 else 0.0


def measure_download(
    chunks: Iterator[bytes], cache_file: Path, coordinator: str, *, max_s: float = 20.0
) -> float:
    """Time a download of the coordinator's probe blob (at most `max_s`), cache and return
    the rate in bytes/s (0 if nothing arrived)."""
    received = 0
    began = time.perf_counter()
    for data in chunks:
        received += len(data)
        if time.perf_counter() - began > max_s:
            break
    elapsed = time.perf_counter() - began
    rate = received / elapsed if received and elapsed > 0 else 0.0
    if rate:
        values = _cached(cache_file)
        rates = values.get("download_bytes_per_s")
        rates = dict(rates) if isinstance(rates, dict) else {}
        rates[coordinator] = rate
        values["download_bytes_per_s"] = rates
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(values))
        logger.info("download from %s: %.1f MB/s measured", coordinator, rate / 1e6)
    return rate


def profile_with_benchmark(cache_file: Path) -> HardwareProfile:
    """The hardware profile with a compute benchmark, cached on disk per machine and torch."""
    hardware = detect_hardware()
    key = "/".join(
        [
            hardware.device_type,
            hardware.device_name,
            torch.__version__,
            str(torch.get_num_threads()),
        ]
    )
    cached = _cached(cache_file)
    try:
        if cached.get("key") != key:
            raise ValueError("stale benchmark")
        flops = float(cached["flops_per_s"])  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError):
        flops = measure_flops()
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps({**cached, "key": key, "flops_per_s": flops}))
    if hardware.device_type == "cpu":
        logger.info(
            "no GPU found: running on the CPU (%d cores, %.1f GFLOP/s measured)",
            hardware.cpu_cores,
            flops / 1e9,
        )
    return HardwareProfile(**{**hardware.__dict__, "flops_per_s": flops})
