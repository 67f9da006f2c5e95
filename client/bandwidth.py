"""Bandwidth caps: a token bucket that paces the bytes a worker sends or receives.

A volunteer's upload link is often a few megabits shared with the household, so
`--max-upload-mbps` and `--max-download-mbps` hold the client to a rate. The bucket starts
empty and fills at the rate, up to `burst_s` seconds' worth; taking n bytes waits until n tokens
are there (a take larger than the bucket waits for the whole of it), so over any transfer the
client never moves more than rate x time + one burst.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Paces byte counts to `rate_mbps` megabits per second (0: no limit)."""

    def __init__(
        self,
        rate_mbps: float,
        *,
        burst_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if not 0 <= rate_mbps <= 1e6:
            raise ValueError(f"rate_mbps must be in [0, 1000000], got {rate_mbps}")
        if not 0 < burst_s <= 10:
            raise ValueError(f"burst_s must be in (0, 10], got {burst_s}")
        self.rate_bytes_s = rate_mbps * 1e6 / 8
        self._capacity = self.rate_bytes_s * burst_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._updated = clock()

    @property
    def limited(self) -> bool:
        return self.rate_bytes_s > 0

    def take(self, num_bytes: int) -> float:
        """Wait until `num_bytes` may pass; returns the seconds waited."""
        if not self.limited or num_bytes <= 0:
            return 0.0
        with self._lock:  # one transfer at a time draws from the bucket; the others queue
            now = self._clock()
            self._tokens = min(
                self._capacity, self._tokens + (now - self._updated) * self.rate_bytes_s
            )
            self._updated = now
            self._tokens -= num_bytes
            wait = -self._tokens / self.rate_bytes_s if self._tokens < 0 else 0.0
            if wait:
                self._sleep(wait)
                self._tokens = 0.0
                self._updated = self._clock()
            return wait
