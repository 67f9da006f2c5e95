"""The operator's levers on the swarm itself: ban and unban workers, drain and undrain.

A banned worker gets no tasks, its results are refused, its running tasks go to others at
once, and it no longer counts as online anywhere (round sizes, placement, the dashboard).
A draining swarm hands out no new tasks; running ones finish and are accepted, so the
coordinator can then be stopped or upgraded without losing work.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select

from swarm.coordinator import spans
from swarm.coordinator.storage import Database, SwarmFlag, Task, Worker
from swarm.protocol.errors import NotFoundError
from swarm.scheduler.jobs import TaskStatus

logger = logging.getLogger(__name__)

DRAINING = "draining"


class SwarmControl:
    def __init__(self, db: Database) -> None:
        self._db = db

    def ban(self, worker_id: str, reason: str) -> Worker:
        """Ban a worker (again: the reason is updated); its leased tasks are handed out anew."""
        now = time.time()
        with self._db.transaction() as session:
            worker = session.get(Worker, worker_id, with_for_update=True)
            if worker is None:
                raise NotFoundError(f"no worker {worker_id!r:.60}")
            worker.banned_at = worker.banned_at or now
            worker.ban_reason = reason[:200] or "banned by the operator"
            worker.assigned_job_id = None
            running = list(
                session.scalars(
                    select(Task).where(
                        Task.worker_id == worker_id, Task.status == TaskStatus.LEASED.value
                    )
                )
            )
            for task in running:
                spans.revoke(session, task, now, requeue=True)
        logger.warning(
            "worker %s banned (%s); %d running tasks handed out again",
            worker_id,
            worker.ban_reason,
            len(running),
        )
        return worker

    def unban(self, worker_id: str) -> Worker:
        with self._db.transaction() as session:
            worker = session.get(Worker, worker_id, with_for_update=True)
            if worker is None:
                raise NotFoundError(f"no worker {worker_id!r:.60}")
            worker.banned_at = None
            worker.ban_reason = None
        logger.info("worker %s unbanned", worker_id)
        return worker

    def drain(self, reason: str = "") -> dict[str, Any]:
        """Stop handing out tasks (running ones finish); returns the drain's state."""
        value = {"since": time.time(), "reason": reason[:200]}
        with self._db.transaction() as session:
            flag = session.get(SwarmFlag, DRAINING, with_for_update=True)
            if flag is not None:
                return dict(flag.value)  # already draining: keep when and why it began
            session.add(SwarmFlag(name=DRAINING, value=value, updated_at=value["since"]))
        logger.warning("swarm draining: no new tasks are handed out (%s)", reason or "no reason")
        return value

    def undrain(self) -> None:
        with self._db.transaction() as session:
            flag = session.get(SwarmFlag, DRAINING)
            if flag is not None:
                session.delete(flag)
        logger.info("swarm no longer draining")

    def draining(self) -> dict[str, Any] | None:
        """The drain's `since` and `reason`, or None when the swarm hands out tasks."""
        with self._db.read() as session:
            flag = session.get(SwarmFlag, DRAINING)
            return dict(flag.value) if flag is not None else None
