"""What the worker is doing, for the live view, `swarmclient status` and `swarmclient credits`.

The worker updates one `WorkerStatus` as it goes (task, step, loss, speed, bytes, latency and
the credits the coordinator reports with every heartbeat) and writes it to
`<data-dir>/status.json` at most once a second as it changes, so a client running in the
background can be asked how it is doing from another terminal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
#: a status file older than this belongs to a client that is no longer running.
STALE_AFTER_S = 90.0
#: the least time between two writes of the status file.
SAVE_EVERY_S = 1.0


@dataclass
class WorkerStatus:
    coordinator: str = ""
    name: str = ""
    worker_id: str = ""
    device: str = ""
    state: str = "starting"
    """starting, connecting, idle, training, evaluating, submitting, stopping, stopped."""
    detail: str = ""
    """Why the worker is idle, what it is waiting for, or the last error, in words."""
    task_id: str = ""
    job_id: str = ""
    step: int = 0
    steps: int = 0
    loss: float | None = None
    tokens_per_s: float = 0.0
    tasks_done: int = 0
    tasks_handed_back: int = 0
    credits_granted: float = 0.0
    credits_pending: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    latency_ms: float | None = None
    max_upload_mbps: float = 0.0
    max_download_mbps: float = 0.0
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


class StatusBoard:
    """The worker's status, shared between its threads, and its file on disk."""

    def __init__(self, path: Path, **initial: Any) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._status = WorkerStatus(**initial)
        self._saved_at = 0.0

    def update(self, **changes: Any) -> None:
        """Change some fields; the file follows within `SAVE_EVERY_S`."""
        with self._lock:
            for key, value in changes.items():
                setattr(self._status, key, value)
            now = self._status.updated_at = time.time()
            due = now - self._saved_at >= SAVE_EVERY_S
        if due:
            self.save()

    def snapshot(self) -> WorkerStatus:
        with self._lock:
            return dataclasses.replace(self._status)

    def save(self) -> None:
        """Write the status atomically (a reader sees the old file or the new one)."""
        with self._lock:
            self._saved_at = time.time()
            text = json.dumps(dataclasses.asdict(self._status))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One writer at a time: threads share the partial file's name.
            partial = self.path.with_suffix(f".{threading.get_ident()}.new")
            partial.write_text(text)
            os.replace(partial, self.path)


def read_status(data_dir: Path) -> WorkerStatus | None:
    """The last status a client with this data directory wrote (None: never, or unreadable)."""
    try:
        values = json.loads((data_dir / STATUS_FILE).read_text())
        known = {f.name for f in dataclasses.fields(WorkerStatus)}
        return WorkerStatus(**{k: v for k, v in values.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def is_running(status: WorkerStatus, now: float | None = None) -> bool:
    """Whether the client that wrote `status` still runs: its process exists and it wrote
    recently (a process id can be reused after a reboot, so both count)."""
    now = time.time() if now is None else now
    if status.state == "stopped" or now - status.updated_at > STALE_AFTER_S:
        return False
    try:
        os.kill(status.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
