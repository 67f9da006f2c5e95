"""Per-worker call rates: a worker that calls faster than any honest client does is refused
until it slows down, so one hostile session cannot take the coordinator's capacity from
everyone else. (Per coordinator process; registrations are not limited, see docs/security.md.)"""

from __future__ import annotations

import threading
import time

from swarm.protocol.errors import THROTTLED_PREFIX, OverloadedError

IDLE_FORGET_S = 600.0
"""A key not seen this long is forgotten (its bucket would be full again anyway)."""


class CallThrottle:
    """A token bucket per key: `burst` calls at once, `rate_per_s` sustained.

    `rate_per_s` 0 turns it off."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated at)
        self._lock = threading.Lock()
        self._swept_at: float | None = None

    def take(self, key: str, what: str, now: float | None = None) -> None:
        """Spend one call of `key`'s; raise `OverloadedError` (retryable) if it has none."""
        if self.rate_per_s <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._swept_at is None:
                self._swept_at = now
            tokens, updated = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - updated) * self.rate_per_s)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise OverloadedError(
                    f"{THROTTLED_PREFIX} {what} made more than {self.rate_per_s:g} calls a second "
                    f"(bursts of {self.burst}); retry after a backoff"
                )
            self._buckets[key] = (tokens - 1.0, now)
            if now - self._swept_at > IDLE_FORGET_S:  # now and then, not on every call
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        for key in [k for k, (_, at) in self._buckets.items() if now - at > IDLE_FORGET_S]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
