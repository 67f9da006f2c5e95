"""Lease policy: how long a worker may hold a task, and who may take which task.

Pure functions of times and counts; the coordinator's storage applies them in transactions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swarm.protocol.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class LeasePolicy:
    """Attributes:
    ttl_s: a lease lives this long past the latest heartbeat that mentions its task.
    max_task_s: no heartbeat extends a lease beyond this long after it was granted.
    solo_wait_s: a fresh task of a round waits this long for a worker that has not yet
        contributed to the round, before any worker may take it.
    """

    ttl_s: float = 30.0
    max_task_s: float = 3600.0
    solo_wait_s: float = 20.0

    def __post_init__(self) -> None:
        for name in ("ttl_s", "max_task_s", "solo_wait_s"):
            value = getattr(self, name)
            if math.isnan(value) or not 0.0 < value <= 86_400.0:
                raise ConfigError(f"{name} must be in (0, 86400] seconds, got {value}")
        if self.ttl_s > self.max_task_s:
            raise ConfigError(
                f"ttl_s ({self.ttl_s}) must not exceed max_task_s ({self.max_task_s})"
            )

    def deadline(self, leased_at: float, now: float, limit_s: float | None = None) -> float:
        """The deadline of a lease granted at `leased_at`, as of a heartbeat at `now`.

        `limit_s` is how long this lease may live at most, from the worker's measured speed
        (`swarm.scheduler.work.lease_limit_s`); never more than `max_task_s`.
        """
        limit = self.max_task_s if limit_s is None else min(limit_s, self.max_task_s)
        return min(now + self.ttl_s, leased_at + limit)

    def may_take(
        self, *, attempts: int, available_since: float, now: float, worker_in_round: bool
    ) -> bool:
        """Whether a worker may lease a pending task.

        A worker normally does one task per round, so every online worker contributes. A task
        that was already tried (its lease expired or was handed back), or that nobody new
        claimed within `solo_wait_s`, is open to anyone so the round never stalls.
        """
        return not worker_in_round or attempts > 0 or now - available_since >= self.solo_wait_s
