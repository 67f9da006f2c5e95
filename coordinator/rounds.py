"""The life of a round: open it with one train task per online worker, close it with an outer step.

Each round also carries one evaluate task, which a worker runs on the held-out set for the
version the round starts from; after the last training round a final round only evaluates, and
closing it packages the result (adapter and merged model). So version r's held-out metrics
belong to round r, and the coordinator never runs the model itself while training.

Closing is claimed with a conditional update (`open` -> `aggregating`), so exactly one
coordinator steps a round even when several share the database; a crash while aggregating is
undone at start-up by `recover`, and the round is stepped again from the same inputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from swarm.compression import make_delta
from swarm.coordinator.aggregation import average_payloads, nesterov_step
from swarm.coordinator.artifacts import build_artifacts
from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.storage import Database, Event, Job, Lease, Round, Task, Worker
from swarm.models import state_from_bytes, state_to_bytes
from swarm.scheduler import (
    JobSpec,
    JobStatus,
    RoundStatus,
    TaskStatus,
    check_job_move,
    num_tasks_for_round,
    shard_for_task,
    task_seed,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Version:
    """The blobs of one published version."""

    params_sha256: str
    worker_params_sha256: str
    momentum_sha256: str | None = None
    delta_sha256: str | None = None
    delta_bytes: int | None = None


class RoundService:
    def __init__(
        self, db: Database, blobs: BlobStore, catalog: ModelCatalog, *, worker_online_s: float
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._catalog = catalog
        self._worker_online_s = worker_online_s

    def start_job(self, session: Session, job: Job, params_sha256: str, now: float) -> None:
        check_job_move(JobStatus(job.status), JobStatus.RUNNING)
        job.status = JobStatus.RUNNING.value
        job.started_at = now
        self.open_round(
            session,
            job,
            0,
            Version(params_sha256=params_sha256, worker_params_sha256=params_sha256),
            now,
        )

    def open_round(
        self, session: Session, job: Job, index: int, version: Version, now: float
    ) -> Round:
        spec = JobSpec(**job.spec)
        online = (
            session.scalar(
                select(func.count())
                .select_from(Worker)
                .where(Worker.last_seen_at >= now - self._worker_online_s)
            )
            or 0
        )
        # Training rounds get one train task per online worker; the round after the last one only
        # measures the final version. Every round's last task evaluates the version it starts from.
        num_train = num_tasks_for_round(spec, online) if index < spec.num_rounds else 0
        num_tasks = num_train + 1
        round_ = Round(
            job_id=job.id,
            index=index,
            status=RoundStatus.OPEN.value,
            params_sha256=version.params_sha256,
            momentum_sha256=version.momentum_sha256,
            worker_params_sha256=version.worker_params_sha256,
            delta_sha256=version.delta_sha256,
            delta_bytes=version.delta_bytes,
            num_tasks=num_tasks,
            num_train_tasks=num_train,
            opened_at=now,
            tokens=0,
            bytes_up=0,
            bytes_down=0,
            num_clients=0,
        )
        session.add(round_)
        session.flush()
        for i in range(num_tasks):
            session.add(
                Task(
                    id=f"task-{job.id.removeprefix('ftjob-')[:12]}-{index}-{i}",
                    job_id=job.id,
                    round_id=round_.id,
                    round_index=index,
                    index=i,
                    kind="train" if i < num_train else "evaluate",
                    shard_index=shard_for_task(job.tasks_created, i, spec.num_shards),
                    seed=task_seed(spec.seed, index, i),
                    status=TaskStatus.PENDING.value,
                    attempts=0,
                    available_since=now,
                )
            )
        job.tasks_created += num_train
        logger.info(
            "job %s round %d opened with %d train tasks and an evaluation (%d workers online)",
            job.id,
            index,
            num_train,
            online,
        )
        return round_

    def rounds_ready(self) -> list[int]:
        """Open rounds of running jobs whose every task has an accepted result."""
        with self._db.transaction() as session:
            unfinished = select(Task.round_id).where(Task.status != TaskStatus.ACCEPTED.value)
            return list(
                session.scalars(
                    select(Round.id)
                    .join(Job, Job.id == Round.job_id)
                    .where(
                        Round.status == RoundStatus.OPEN.value,
                        Job.status == JobStatus.RUNNING.value,
                        Round.id.not_in(unfinished),
                    )
                )
            )

    def recover(self) -> int:
        """Reopen rounds a crashed coordinator left half-aggregated; returns how many."""
        with self._db.transaction() as session:
            result = session.execute(
                update(Round)
                .where(Round.status == RoundStatus.AGGREGATING.value)
                .values(status=RoundStatus.OPEN.value)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def close_round(self, round_id: int) -> bool:
        """Aggregate a complete round and publish the next version; False if someone else did."""
        with self._db.transaction() as session:
            claimed = session.execute(
                update(Round)
                .where(
                    Round.id == round_id,
                    Round.status == RoundStatus.OPEN.value,
                )
                .values(status=RoundStatus.AGGREGATING.value)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return False
            round_ = session.get_one(Round, round_id)
            job = session.get_one(Job, round_.job_id)
            tasks = list(session.scalars(select(Task).where(Task.round_id == round_id)))
        began = time.perf_counter()
        spec = JobSpec(**job.spec)
        train = [t for t in tasks if t.kind == "train"]
        # Rounds opened before evaluate tasks existed (migration 0003) have none.
        evaluation = next((t.metrics or {} for t in tasks if t.kind == "evaluate"), None)
        version: Version | None = None
        artifacts: dict[str, Any] | None = None
        try:
            if train:
                new_params, new_momentum = self._outer_step(job, spec, round_, train)
                version = self._publish(spec, round_, new_params, new_momentum)
            elif job.status == JobStatus.RUNNING.value:  # the final evaluation: package the result
                artifacts = self._artifacts(job, round_)
        except Exception as exc:  # a platform fault: fail the job loudly, never strand the round
            logger.exception("job %s round %d: closing failed", job.id, round_.index)
            self._fail_job(round_id, f"closing round {round_.index} failed: {exc}")
            return True
        self._commit_round(round_id, train, evaluation, version, artifacts)
        logger.info(
            "job %s round %d closed in %.2fs: held-out loss of version %d %.4f",
            job.id,
            round_.index,
            time.perf_counter() - began,
            round_.index,
            (evaluation or {}).get("eval_loss", float("nan")),
        )
        return True

    def _fail_job(self, round_id: int, message: str) -> None:
        now = time.time()
        with self._db.transaction() as session:
            round_ = session.get_one(Round, round_id)
            round_.status = RoundStatus.CLOSED.value
            round_.closed_at = now
            job = session.get_one(Job, round_.job_id, with_for_update=True)
            if not JobStatus(job.status).is_terminal:
                job.status = JobStatus.FAILED.value
                job.finished_at = now
                job.error = {"code": "platform_error", "message": message, "param": None}
            session.add(
                Event(job_id=job.id, created_at=now, level="error", type="message", message=message)
            )

    def _outer_step(
        self, job: Job, spec: JobSpec, round_: Round, tasks: list[Task]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        shapes = {name: tuple(shape) for name, shape in job.param_shapes.items()}
        average = average_payloads(
            [partial(self._blobs.open, t.result_sha256 or "") for t in tasks],
            [float((t.metrics or {}).get("tokens", 1)) for t in tasks],
            shapes,
            spec.update_policy(),
        )
        params = state_from_bytes(self._blobs.read(round_.params_sha256))
        momentum = (
            state_from_bytes(self._blobs.read(round_.momentum_sha256))
            if round_.momentum_sha256
            else None
        )
        return nesterov_step(
            params,
            average,
            momentum,
            lr=spec.outer_lr,
            momentum=spec.outer_momentum,
        )

    def _publish(
        self,
        spec: JobSpec,
        round_: Round,
        params: dict[str, torch.Tensor],
        momentum: dict[str, torch.Tensor],
    ) -> Version:
        """Store the next version and the broadcast delta workers of this version apply."""
        held = state_from_bytes(self._blobs.read(round_.worker_params_sha256))
        delta, worker_params = make_delta(
            held, params, spec.broadcast_policy(), seed=task_seed(spec.seed, round_.index + 1, 0)
        )
        return Version(
            params_sha256=self._blobs.put_bytes(state_to_bytes(params)),
            momentum_sha256=self._blobs.put_bytes(state_to_bytes(momentum)),
            worker_params_sha256=self._blobs.put_bytes(state_to_bytes(worker_params)),
            delta_sha256=self._blobs.put_bytes(delta),
            delta_bytes=len(delta),
        )

    def _artifacts(self, job: Job, round_: Round) -> dict[str, Any]:
        """The adapter and the merged model of the final version, as stored files.

        Built from the workers' copy of the version, the one the final evaluation measured.
        """
        params = state_from_bytes(self._blobs.read(round_.worker_params_sha256))
        return build_artifacts(job, params, self._blobs, self._catalog)

    def _commit_round(
        self,
        round_id: int,
        train: list[Task],
        evaluation: dict[str, Any] | None,
        version: Version | None,
        artifacts: dict[str, Any] | None,
    ) -> None:
        now = time.time()
        with self._db.transaction() as session:
            round_ = session.get_one(Round, round_id)
            job = session.get_one(Job, round_.job_id, with_for_update=True)
            spec = JobSpec(**job.spec)
            totals = session.execute(
                select(
                    func.coalesce(func.sum(Lease.bytes_up), 0),
                    func.coalesce(func.sum(Lease.bytes_down), 0),
                ).where(Lease.round_id == round_id)
            ).one()
            metrics = [t.metrics or {} for t in train]
            tokens = sum(int(m.get("tokens", 0)) for m in metrics)
            if train:
                round_.train_loss = sum(
                    m.get("loss_mean", 0.0) * m.get("tokens", 0) for m in metrics
                ) / max(tokens, 1)
            if evaluation is not None:
                round_.eval_metrics = held_out_metrics(spec.method, evaluation)
                round_.eval_loss = round_.eval_metrics["loss"]
                job.eval_loss = round_.eval_loss
                job.eval_metrics = round_.eval_metrics
            round_.tokens = tokens
            round_.bytes_up, round_.bytes_down = int(totals[0]), int(totals[1])
            round_.num_clients = len({m.get("worker_id") for m in metrics})
            round_.status = RoundStatus.CLOSED.value
            round_.closed_at = now
            if round_.index == 0:
                job.initial_eval_loss = round_.eval_loss
                job.initial_eval_metrics = round_.eval_metrics
            job.rounds_completed = min(round_.index + 1, spec.num_rounds)
            job.trained_tokens += tokens
            session.add(
                Event(
                    job_id=job.id,
                    created_at=now,
                    level="info",
                    type="metrics",
                    message=_round_message(round_, spec.num_rounds),
                    data=round_summary(round_),
                )
            )
            if job.status != JobStatus.RUNNING.value:
                return
            if version is not None:
                self.open_round(session, job, round_.index + 1, version, now)
                return
            job.status = JobStatus.SUCCEEDED.value
            job.finished_at = now
            job.result_params_sha256 = round_.worker_params_sha256
            job.artifacts = artifacts
            session.add(
                Event(
                    job_id=job.id,
                    created_at=now,
                    level="info",
                    type="message",
                    message=f"job succeeded after {spec.num_rounds} rounds: held-out "
                    f"{describe_metrics(job.initial_eval_metrics)} -> "
                    f"{describe_metrics(job.eval_metrics)}; artifacts: "
                    f"{', '.join(sorted(artifacts or {}))}",
                )
            )


HELD_OUT_KEYS = {
    "lm": ("loss",),
    "sft": ("loss", "token_accuracy"),
    "dpo": ("loss", "reward_accuracy", "reward_margin"),
}


def held_out_metrics(method: str, reported: dict[str, Any]) -> dict[str, float]:
    """The held-out metrics of `method` from an evaluate task's reported metrics."""
    values = {"loss": float(reported.get("eval_loss", float("nan")))}
    for key in HELD_OUT_KEYS[method][1:]:
        values[key] = float(reported.get(key, float("nan")))
    values["examples"] = float(reported.get("examples", 0))
    return values


def describe_metrics(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "n/a"
    return ", ".join(
        f"{key.replace('_', ' ')} {value:.4f}"
        for key, value in metrics.items()
        if key != "examples"
    )


def _round_message(round_: Round, num_rounds: int) -> str:
    held_out = describe_metrics(round_.eval_metrics)
    if round_.index >= num_rounds:
        return f"final version: held-out {held_out}"
    return (
        f"round {round_.index}: train loss {round_.train_loss:.4f}; held-out at its start "
        f"{held_out}"
    )


def round_summary(round_: Round) -> dict[str, Any]:
    """The numbers of one round, as the API and the demo report them."""
    return {
        "round": round_.index,
        "status": round_.status,
        "train_loss": round_.train_loss,
        "eval_loss": round_.eval_loss,
        "eval_metrics": round_.eval_metrics,
        "num_train_tasks": round_.num_train_tasks,
        "tokens": round_.tokens,
        "bytes_up": round_.bytes_up,
        "bytes_down": round_.bytes_down,
        "num_clients": round_.num_clients,
        "num_tasks": round_.num_tasks,
        "delta_bytes": round_.delta_bytes,
        "opened_at": round_.opened_at,
        "closed_at": round_.closed_at,
    }
