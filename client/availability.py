"""When the volunteer lets the client work: a daily schedule window, and only while idle.

Both are checked before the client asks for a task; a task already running finishes (a task is
minutes of work, and handing it back would waste it).

- `--schedule 22:00-07:00` works only inside that local-time window (it may wrap midnight).
- `--idle-only` works only while the rest of the machine is quiet: the CPU time that processes
  other than this client used over the last sample stays under `busy_share` of the machine.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

_WINDOW = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Schedule:
    """A daily window [start, end) in minutes after local midnight; start > end wraps."""

    start_min: int
    end_min: int

    @classmethod
    def parse(cls, text: str) -> Schedule:
        match = _WINDOW.match(text.strip())
        if not match:
            raise ValueError(
                f"schedule {text!r} is not a window such as 22:00-07:00 (HH:MM-HH:MM, local time)"
            )
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if (h1, m1) == (h2, m2):
            raise ValueError(f"schedule {text!r} is empty: its start and end are the same")
        return cls(h1 * 60 + m1, h2 * 60 + m2)

    def contains(self, minute: int) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def now_open(self, clock: Callable[[], float] = time.time) -> bool:
        local = time.localtime(clock())
        return self.contains(local.tm_hour * 60 + local.tm_min)

    def __str__(self) -> str:
        return f"{self.start_min // 60:02d}:{self.start_min % 60:02d}-" + (
            f"{self.end_min // 60:02d}:{self.end_min % 60:02d}"
        )


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (Linux)."""
    with open("/proc/stat") as stat:
        fields = [float(v) for v in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class MachineLoad:
    """How much of the machine other programs use, sampled between two calls."""

    def __init__(
        self,
        *,
        machine: Callable[[], tuple[float, float]] = _machine_cpu_s,
        own: Callable[[], float] = _own_cpu_s,
    ) -> None:
        self._machine = machine
        self._own = own
        self._last: tuple[float, float, float] | None = None

    def others_share(self) -> float | None:
        """The share of the machine's CPU time that other processes used since the last call
        (None on the first call, or where the machine's CPU time cannot be read)."""
        try:
            busy, total = self._machine()
        except (OSError, ValueError, IndexError):
            return None
        own = self._own()
        last, self._last = self._last, (busy, total, own)
        if last is None or total <= last[1]:
            return None
        others = (busy - last[0]) - (own - last[2])
        return max(0.0, others) / (total - last[1])
