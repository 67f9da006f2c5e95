"""The token bucket behind --max-upload-mbps and --max-download-mbps, on a fake clock."""

from __future__ import annotations

import pytest

from swarm.client.bandwidth import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _bucket(rate_mbps: float, clock: FakeClock, burst_s: float = 0.05) -> TokenBucket:
    return TokenBucket(rate_mbps, burst_s=burst_s, clock=clock, sleep=clock.sleep)


def test_a_transfer_takes_its_size_over_the_rate() -> None:
    clock = FakeClock()
    bucket = _bucket(8.0, clock)  # 1 MB/s
    for _ in range(10):
        bucket.take(100_000)
    assert clock.now == pytest.approx(1.0)  # 1 MB at 1 MB/s: it starts empty, no free burst


def test_idle_time_refills_only_a_burst() -> None:
    clock = FakeClock()
    bucket = _bucket(8.0, clock, burst_s=0.1)
    clock.now = 100.0  # long idle: at most 0.1 s worth (100 kB) is banked
    assert bucket.take(100_000) == 0.0
    assert bucket.take(100_000) == pytest.approx(0.1)


def test_a_take_larger_than_the_bucket_waits_for_all_of_it() -> None:
    clock = FakeClock()
    bucket = _bucket(0.8, clock)  # 100 kB/s, a 5 kB bucket
    assert bucket.take(1_000_000) == pytest.approx(10.0)


def test_no_limit_never_waits() -> None:
    clock = FakeClock()
    bucket = _bucket(0.0, clock)
    assert not bucket.limited
    assert bucket.take(10**9) == 0.0
    assert clock.slept == []


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 0.05), (2e6, 0.05), (1.0, 0.0), (1.0, 11.0)])
def test_bad_settings_are_refused_by_name(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match=r"rate_mbps|burst_s"):
        TokenBucket(rate, burst_s=burst)
