"""Finished results on disk until the coordinator has them, so no crash loses finished work.

A train task's encoded update is spooled to `<data-dir>/outbox/<name>.payload` while it is
hashed; once complete, a small JSON note beside it (`<name>.json`, written atomically) says what
it is: the task, its job, the digest, size and metrics. Only a result with its note counts as
finished. The worker removes both once the coordinator answered (accepted or refused); after a
crash, a reboot or SIGKILL, the next start submits every noted result again (the coordinator
accepts a task's result once, so nothing is credited twice) and deletes unfinished spools.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from swarm.protocol import messages as m

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FinishedResult:
    task_id: str
    job_id: str
    lease_deadline_unix_s: float
    payload: Path
    payload_sha256: str
    payload_size: int
    metrics: m.TaskMetrics
    group_task_ids: list[str] = field(default_factory=list)
    """The peer group's tasks when this is the group's average (see `swarm.client.peers`)."""


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _stem(self, task_id: str) -> Path:
        return self.root / hashlib.sha256(task_id.encode()).hexdigest()[:32]

    def spool(self, task_id: str, pieces: Iterator[bytes]) -> tuple[Path, str, int]:
        """Write an encoded result, hashing as it goes; (path, digest, size)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._stem(task_id).with_suffix(".payload")
        digest = hashlib.sha256()
        size = 0
        with path.open("wb") as out:
            for piece in pieces:
                out.write(piece)
                digest.update(piece)
                size += len(piece)
            out.flush()
            os.fsync(out.fileno())
        return path, digest.hexdigest(), size

    def seal(self, result: FinishedResult) -> None:
        """Mark a spooled result finished: from now on a restart submits it again."""
        note = self._stem(result.task_id).with_suffix(".json")
        partial = note.with_suffix(".new")
        partial.write_text(
            json.dumps(
                {
                    "task_id": result.task_id,
                    "job_id": result.job_id,
                    "lease_deadline_unix_s": result.lease_deadline_unix_s,
                    "payload_sha256": result.payload_sha256,
                    "payload_size": result.payload_size,
                    "metrics": dataclasses.asdict(result.metrics),
                    "group_task_ids": result.group_task_ids,
                }
            )
        )
        os.replace(partial, note)

    def remove(self, task_id: str) -> None:
        stem = self._stem(task_id)
        for suffix in (".json", ".payload"):
            stem.with_suffix(suffix).unlink(missing_ok=True)

    def finished(self) -> list[FinishedResult]:
        """Results noted as finished, oldest first; unfinished or damaged spools are deleted."""
        if not self.root.is_dir():
            return []
        results: list[tuple[float, str, FinishedResult]] = []
        for note in self.root.glob("*.json"):
            payload = note.with_suffix(".payload")
            try:
                values = json.loads(note.read_text())
                result = FinishedResult(
                    task_id=str(values["task_id"]),
                    job_id=str(values["job_id"]),
                    lease_deadline_unix_s=float(values["lease_deadline_unix_s"]),
                    payload=payload,
                    payload_sha256=str(values["payload_sha256"]),
                    payload_size=int(values["payload_size"]),
                    metrics=m.TaskMetrics(**values["metrics"]),
                    group_task_ids=[str(t) for t in values.get("group_task_ids", [])],
                )
                if payload.stat().st_size != result.payload_size:
                    raise ValueError("the payload's size is not the noted one")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("outbox: dropping damaged result %s (%s)", note.name, exc)
                note.unlink(missing_ok=True)
                payload.unlink(missing_ok=True)
                continue
            results.append((note.stat().st_mtime, result.task_id, result))
        noted = {r.payload for _, _, r in results}
        for spool in self.root.glob("*.payload"):
            if spool not in noted:  # the client stopped before the result was finished
                spool.unlink(missing_ok=True)
        return [result for _, _, result in sorted(results, key=lambda row: row[:2])]
