"""Coordinators sharing one database: who they are and whether they are still there.

Several `swarm coordinator` processes may serve one PostgreSQL database (workers use any of
them). Each has an id, kept in its data directory so a restart is the same coordinator, and
a row in `coordinators` it touches every few seconds from its housekeeping thread. A round a
coordinator was aggregating when it stopped being seen is reopened by another (see
`RoundService.recover`), so a coordinator killed mid-aggregation stalls its round for
`coordinator_timeout_s` at most, and a slow one that comes back finds its work taken over and
drops it instead of committing it twice.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from swarm.coordinator.storage import Coordinator, Database

ID_FILE = "coordinator.id"
TOUCH_EVERY_S = 2.0


def new_coordinator_id() -> str:
    return f"co-{secrets.token_hex(6)}"


def load_coordinator_id(data_dir: Path) -> str:
    """This data directory's coordinator id, created on first use."""
    path = data_dir / ID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text.startswith("co-") and len(text) <= 40 and text[3:].isalnum():
        return text
    data_dir.mkdir(parents=True, exist_ok=True)
    coordinator_id = new_coordinator_id()
    temp = path.with_suffix(".tmp")
    temp.write_text(coordinator_id + "\n")
    os.replace(temp, path)
    return coordinator_id


class Presence:
    """This coordinator's row in `coordinators`, kept fresh."""

    def __init__(self, db: Database, coordinator_id: str, *, timeout_s: float = 30.0) -> None:
        self._db = db
        self.coordinator_id = coordinator_id
        self._timeout_s = timeout_s
        self._touched_at = 0.0

    def announce(self, host: str, grpc_port: int, http_port: int) -> None:
        """Say this coordinator serves here now (again, after a restart)."""
        now = time.time()
        with self._db.transaction() as session:
            row = session.get(Coordinator, self.coordinator_id, with_for_update=True)
            if row is None:
                row = Coordinator(id=self.coordinator_id)
                session.add(row)
            if row.started_at is None or not self._touched_at:  # this process's first word
                row.started_at = now
            row.host, row.grpc_port, row.http_port = host[:200], grpc_port, http_port
            row.pid, row.last_seen_at = os.getpid(), now
        self._touched_at = now

    def touch(self, now: float | None = None) -> None:
        """Record that this coordinator is alive (at most every `TOUCH_EVERY_S`)."""
        now = time.time() if now is None else now
        if now - self._touched_at < TOUCH_EVERY_S:
            return
        with self._db.transaction() as session:
            session.execute(
                update(Coordinator)
                .where(Coordinator.id == self.coordinator_id)
                .values(last_seen_at=now)
            )
        self._touched_at = now

    def coordinators(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every coordinator this database has known, newest first, with whether it is alive."""
        now = time.time() if now is None else now
        with self._db.read() as session:
            rows = session.scalars(select(Coordinator).order_by(Coordinator.started_at.desc()))
            return [
                {
                    "id": row.id,
                    "host": row.host,
                    "grpc_port": row.grpc_port,
                    "http_port": row.http_port,
                    "pid": row.pid,
                    "started_at": row.started_at,
                    "last_seen_at": row.last_seen_at,
                    "alive": now - row.last_seen_at <= self._timeout_s,
                    "this": row.id == self.coordinator_id,
                }
                for row in rows
            ]
