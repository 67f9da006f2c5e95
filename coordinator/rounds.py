"""The life of a round: open it with train tasks for the job's workers, close it with an outer step.

Each round also carries one evaluate task, which a worker runs on the held-out set for the
version the round starts from; after the last training round a final round only evaluates, and
closing it packages the result (adapter and merged model). So version r's held-out metrics
belong to round r, and the coordinator never runs the model itself while training.

A round closes once its evaluation is in and every train task is accepted, or, after its
deadline, as soon as a quorum of them is. Its step averages the accepted pseudo-gradients
(weighted by tokens) together with late results of earlier rounds (weighted down by their
staleness). Train tasks still running at the close either keep running, to be applied later
(`late_updates=stale`), or are revoked (`drop`); tasks nobody took are cancelled, and their data
spans go back to the free list. Credit for the round's results is granted when it closes.

Closing is claimed with a conditional update (`open` -> `aggregating`), so exactly one
coordinator steps a round even when several share the database; a crash while aggregating is
undone at start-up by `recover`, and the round is stepped again from the same inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from sqlalchemy import func, not_, or_, select, update
from sqlalchemy.orm import Session

from swarm.compression import make_delta
from swarm.coordinator import spans
from swarm.coordinator.aggregation import average_payloads, nesterov_step
from swarm.coordinator.artifacts import build_artifacts
from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.ledger import Ledger
from swarm.coordinator.presence import new_coordinator_id
from swarm.coordinator.storage import (
    Checkpoint,
    Coordinator,
    Database,
    Event,
    Job,
    Lease,
    Round,
    Task,
    Worker,
)
from swarm.coordinator.storage import online as is_online
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
    worker_account,
)
from swarm.scheduler.work import (
    close_at,
    effective_flops_per_s,
    expected_task_s,
    quorum_count,
    reference_speed,
    round_timeout_s,
    samples_per_task,
    staleness_weight,
    step_fraction,
    task_flops,
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


def _read_state(blobs: BlobStore, sha256: str) -> dict[str, torch.Tensor]:
    return state_from_bytes(blobs.read(sha256))


def _put_state(blobs: BlobStore, state: dict[str, torch.Tensor]) -> str:
    return blobs.put_bytes(state_to_bytes(state))


def new_checkpoint_id(job_id: str, version: int) -> str:
    return f"ftckpt-{job_id.removeprefix('ftjob-')[:24]}-{version}"


class RoundService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        catalog: ModelCatalog,
        ledger: Ledger,
        *,
        worker_online_s: float,
        max_task_s: float = 3600.0,
        coordinator_id: str = "",
        coordinator_timeout_s: float = 30.0,
    ) -> None:
        """`coordinator_id` names this process among the coordinators sharing the database
        (see `swarm.coordinator.presence`); one not seen for `coordinator_timeout_s` has its
        half-aggregated rounds taken over."""
        self.coordinator_id = coordinator_id or new_coordinator_id()
        self._coordinator_timeout_s = coordinator_timeout_s
        self._db = db
        self._blobs = blobs
        self._catalog = catalog
        self._ledger = ledger
        self._worker_online_s = worker_online_s
        self._max_task_s = max_task_s

    def start_job(self, session: Session, job: Job, now: float) -> None:
        """A queued job starts: round 0 opens at its initial parameters."""
        check_job_move(JobStatus(job.status), JobStatus.RUNNING)
        job.status = JobStatus.RUNNING.value
        job.started_at = now
        params = job.initial_params_sha256 or ""
        self.open_round(
            session, job, 0, Version(params_sha256=params, worker_params_sha256=params), now
        )

    def open_round(
        self,
        session: Session,
        job: Job,
        index: int,
        version: Version,
        now: float,
        *,
        train: bool = True,
    ) -> Round:
        spec = JobSpec(**job.spec)
        online = is_online(now, self._worker_online_s)
        mine = (
            session.scalar(
                select(func.count())
                .select_from(Worker)
                .where(online, Worker.assigned_job_id == job.id)
            )
            or 0
        )
        unplaced = (
            session.scalar(
                select(func.count())
                .select_from(Worker)
                .where(online, Worker.assigned_job_id.is_(None))
            )
            or 0
        )
        # Training rounds get one train task per worker placed on the job (or not yet placed
        # anywhere); the final round only measures the last version. Every round's last task
        # evaluates the version it starts from.
        num_train = num_tasks_for_round(spec, mine + unplaced) if train else 0
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
            deadline_at=now + self.timeout_s(session, job, now),
            tokens=0,
            bytes_up=0,
            bytes_down=0,
            num_clients=0,
            num_late=0,
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
            "job %s round %d opened with %d train tasks and an evaluation (%d workers placed)",
            job.id,
            index,
            num_train,
            mine,
        )
        return round_

    def timeout_s(self, session: Session, job: Job, now: float) -> float:
        """How long a round waits for all its train tasks: a few nominal task times."""
        spec = JobSpec(**job.spec)
        speeds = session.execute(
            select(Worker.flops_per_s, Worker.hardware).where(
                Worker.assigned_job_id == job.id,
                is_online(now, self._worker_online_s),
            )
        )
        speed = reference_speed(
            effective_flops_per_s(measured, hardware.get("flops_per_s", 0))
            for measured, hardware in speeds
        )
        tokens = round(samples_per_task(spec) * (job.tokens_per_sample or 0.0))
        flops = task_flops(spec, job.num_model_params, tokens)
        return round_timeout_s(spec, expected_task_s(flops, speed), self._max_task_s)

    def latest_opened_at(self) -> float | None:
        """When the newest round (of any job, by any coordinator) opened."""
        with self._db.read() as session:
            return session.scalar(select(func.max(Round.opened_at)))

    def rounds_ready(self, now: float | None = None) -> list[int]:
        """Open rounds of running jobs that may close now."""
        now = time.time() if now is None else now
        ready = []
        with self._db.transaction() as session:
            rows = session.execute(
                select(Round, Job)
                .join(Job, Job.id == Round.job_id)
                .where(
                    Round.status == RoundStatus.OPEN.value, Job.status == JobStatus.RUNNING.value
                )
            ).all()
            for round_, job in rows:
                tasks = list(session.scalars(select(Task).where(Task.round_id == round_.id)))
                if self._may_close(session, job, round_, tasks, now):
                    ready.append(round_.id)
        return ready

    def _may_close(
        self, session: Session, job: Job, round_: Round, tasks: list[Task], now: float
    ) -> bool:
        if any(t.kind == "evaluate" and t.status != TaskStatus.ACCEPTED.value for t in tasks):
            return False
        train = [t for t in tasks if t.kind == "train" and t.status != TaskStatus.CANCELLED.value]
        live = [t for t in train if t.status != TaskStatus.ACCEPTED.value]
        if not live:
            return True
        if all(
            t.inner_steps is None and t.status == TaskStatus.PENDING.value for t in live
        ) and not spans.data_left(session, job, self._blobs):
            return True  # the job's data is all cut: these tasks will never get any
        spec = JobSpec(**job.spec)
        quorum = quorum_count(spec, len(train))
        done_at = sorted(
            t.accepted_at or now for t in train if t.status == TaskStatus.ACCEPTED.value
        )
        if len(done_at) < quorum:
            return False
        # A quorum is in: wait a share of the time it took for the rest, and no longer than
        # the round's deadline.
        return now >= close_at(
            spec,
            opened_at=round_.opened_at,
            quorum_at=done_at[quorum - 1],
            deadline_at=round_.deadline_at if round_.deadline_at is not None else float("inf"),
        )

    def recover(self, *, startup: bool = False, now: float | None = None) -> int:
        """Reopen rounds left half-aggregated by a coordinator that is gone; returns how many.

        Gone: not seen for `coordinator_timeout_s`, or, at `startup`, this process's own
        earlier life (a restart on the same data directory). Rounds that other live
        coordinators are aggregating are left to them.
        """
        now = time.time() if now is None else now
        alive = select(Coordinator.id).where(
            Coordinator.last_seen_at >= now - self._coordinator_timeout_s,
            Coordinator.id != self.coordinator_id,
        )
        live_aggregators: list[Any] = [Round.aggregator.in_(alive)]
        if not startup:
            live_aggregators.append(Round.aggregator == self.coordinator_id)
        with self._db.transaction() as session:
            orphaned = list(
                session.scalars(
                    select(Round)
                    .where(Round.status == RoundStatus.AGGREGATING.value)
                    .where(or_(Round.aggregator.is_(None), not_(or_(*live_aggregators))))
                    .with_for_update(skip_locked=True)
                )
            )
            for round_ in orphaned:
                logger.warning(
                    "job %s round %d: reopened; coordinator %s stopped while aggregating it",
                    round_.job_id,
                    round_.index,
                    round_.aggregator or "(unknown)",
                )
                round_.status = RoundStatus.OPEN.value
                round_.aggregator = None
            return len(orphaned)

    def close_round(self, round_id: int) -> bool:
        """Aggregate a round and publish the next version; False if someone else did."""
        with self._db.transaction() as session:
            claimed = session.execute(
                update(Round)
                .where(
                    Round.id == round_id,
                    Round.status == RoundStatus.OPEN.value,
                )
                .values(status=RoundStatus.AGGREGATING.value, aggregator=self.coordinator_id)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return False
            round_ = session.get_one(Round, round_id)
            job = session.get_one(Job, round_.job_id)
            tasks = list(session.scalars(select(Task).where(Task.round_id == round_id)))
            late = list(
                session.scalars(
                    select(Task).where(
                        Task.job_id == job.id,
                        Task.kind == "train",
                        Task.status == TaskStatus.ACCEPTED.value,
                        Task.applied_round.is_(None),
                        Task.round_index < round_.index,
                    )
                )
            )
        began = time.perf_counter()
        spec = JobSpec(**job.spec)
        accepted = [t for t in tasks if t.kind == "train" and t.status == TaskStatus.ACCEPTED.value]
        # Rounds opened before evaluate tasks existed (migration 0003) have none.
        evaluation = next((t.metrics or {} for t in tasks if t.kind == "evaluate"), None)
        version: Version | None = None
        artifacts: dict[str, Any] | None = None
        try:
            if round_.num_train_tasks or accepted or late:
                version = self._outer_step(job, spec, round_, [*accepted, *late])
            elif job.status == JobStatus.RUNNING.value:  # the final evaluation: package the result
                artifacts = self._artifacts(job, round_)
        except Exception as exc:  # a platform fault: fail the job loudly, never strand the round
            logger.exception("job %s round %d: closing failed", job.id, round_.index)
            self._fail_job(round_id, f"closing round {round_.index} failed: {exc}")
            return True
        if not self._commit_round(round_id, [*accepted, *late], evaluation, version, artifacts):
            return False
        logger.info(
            "job %s round %d closed in %.2fs with %d of %d train results%s: held-out loss of "
            "version %d %.4f",
            job.id,
            round_.index,
            time.perf_counter() - began,
            len(accepted),
            round_.num_train_tasks or 0,
            f" and {len(late)} late" if late else "",
            round_.index,
            (evaluation or {}).get("eval_loss", float("nan")),
        )
        return True

    def _still_mine(self, session: Session, round_id: int) -> Round | None:
        """The round, locked, if this coordinator still holds its aggregation; None if another
        took it over (this one was thought gone) and the work done here must be dropped."""
        round_ = session.get_one(Round, round_id, with_for_update=True, populate_existing=True)
        if (
            round_.status == RoundStatus.AGGREGATING.value
            and round_.aggregator == self.coordinator_id
        ):
            return round_
        logger.warning(
            "job %s round %d: coordinator %s took the round over while this one (%s) "
            "aggregated it; this aggregation is dropped",
            round_.job_id,
            round_.index,
            round_.aggregator or "another",
            self.coordinator_id,
        )
        return None

    def _fail_job(self, round_id: int, message: str) -> None:
        now = time.time()
        with self._db.transaction() as session:
            round_ = self._still_mine(session, round_id)
            if round_ is None:
                return
            round_.status = RoundStatus.CLOSED.value
            round_.closed_at = now
            job = session.get_one(Job, round_.job_id, with_for_update=True)
            if not JobStatus(job.status).is_terminal:
                job.status = JobStatus.FAILED.value
                job.finished_at = now
                job.error = {"code": "platform_error", "message": message, "param": None}
                self.stop_tasks(session, job, now)
            session.add(
                Event(job_id=job.id, created_at=now, level="error", type="message", message=message)
            )

    def _outer_step(self, job: Job, spec: JobSpec, round_: Round, tasks: list[Task]) -> Version:
        """Average the results (late ones weighted down), step, and publish the next version.

        The step's learning rate is scaled by the share of a full round's work the results
        carry (`swarm.scheduler.work.step_fraction`)."""
        params = _read_state(self._blobs, round_.params_sha256)
        momentum = (
            _read_state(self._blobs, round_.momentum_sha256) if round_.momentum_sha256 else None
        )
        payloads, weights, total = _payload_weights(round_, tasks)
        if payloads:
            shapes = {name: tuple(shape) for name, shape in job.param_shapes.items()}
            average = average_payloads(
                [partial(self._blobs.open, t.result_sha256 or "") for t in payloads],
                weights,
                shapes,
                spec.update_policy(),
                total=total,
            )
            fraction = step_fraction(
                spec,
                tokens=total,
                num_train_tasks=round_.num_train_tasks or len(tasks),
                tokens_per_sample=job.tokens_per_sample,
            )
            params, momentum = nesterov_step(
                params,
                average,
                momentum,
                lr=spec.outer_lr * fraction,
                momentum=spec.outer_momentum,
            )
        # With no result at all the version is republished unchanged (momentum too), so
        # workers still find an unbroken run of deltas.
        return self._publish(spec, round_, params, momentum)

    def _publish(
        self,
        spec: JobSpec,
        round_: Round,
        params: dict[str, torch.Tensor],
        momentum: dict[str, torch.Tensor] | None,
    ) -> Version:
        """Store the next version and the broadcast delta workers of this version apply."""
        held = _read_state(self._blobs, round_.worker_params_sha256)
        delta, worker_params = make_delta(
            held, params, spec.broadcast_policy(), seed=task_seed(spec.seed, round_.index + 1, 0)
        )
        return Version(
            params_sha256=_put_state(self._blobs, params),
            momentum_sha256=_put_state(self._blobs, momentum) if momentum is not None else None,
            worker_params_sha256=_put_state(self._blobs, worker_params),
            delta_sha256=self._blobs.put_bytes(delta),
            delta_bytes=len(delta),
        )

    def _artifacts(self, job: Job, round_: Round) -> dict[str, Any]:
        """The adapter and the merged model of the final version, as stored files.

        Built from the workers' copy of the version, the one the final evaluation measured.
        """
        params = _read_state(self._blobs, round_.worker_params_sha256)
        return build_artifacts(job, params, self._blobs, self._catalog)

    def _commit_round(
        self,
        round_id: int,
        applied: list[Task],
        evaluation: dict[str, Any] | None,
        version: Version | None,
        artifacts: dict[str, Any] | None,
    ) -> bool:
        """Record the round's outcome and open the next; False if the round is no longer
        this coordinator's to close."""
        now = time.time()
        with self._db.transaction() as session:
            round_ = self._still_mine(session, round_id)
            if round_ is None:
                return False
            job = session.get_one(Job, round_.job_id, with_for_update=True)
            spec = JobSpec(**job.spec)
            totals = session.execute(
                select(
                    func.coalesce(func.sum(Lease.bytes_up), 0),
                    func.coalesce(func.sum(Lease.bytes_down), 0),
                ).where(Lease.round_id == round_id)
            ).one()
            own = [t for t in applied if t.round_id == round_id]
            metrics = [t.metrics or {} for t in applied]
            own_metrics = [t.metrics or {} for t in own] or metrics
            tokens = sum(int(m.get("tokens", 0)) for m in metrics)
            own_tokens = sum(int(m.get("tokens", 0)) for m in own_metrics)
            if applied:
                round_.train_loss = sum(
                    m.get("loss_mean", 0.0) * m.get("tokens", 0) for m in own_metrics
                ) / max(own_tokens, 1)
            if evaluation is not None:
                round_.eval_metrics = held_out_metrics(spec.method, evaluation)
                round_.eval_loss = round_.eval_metrics["loss"]
                job.eval_loss = round_.eval_loss
                job.eval_metrics = round_.eval_metrics
            round_.tokens = tokens
            round_.num_late = len(applied) - len(own)
            round_.bytes_up, round_.bytes_down = int(totals[0]), int(totals[1])
            round_.num_clients = len({m.get("worker_id") for m in metrics})
            round_.status = RoundStatus.CLOSED.value
            round_.closed_at = now
            if round_.index == 0:
                job.initial_eval_loss = round_.eval_loss
                job.initial_eval_metrics = round_.eval_metrics
            final = version is None
            job.rounds_completed = round_.index + (0 if final else 1)
            job.trained_tokens += tokens
            for task in applied:
                session.get_one(Task, task.id).applied_round = round_.index
            dropped = self._settle_unfinished(session, job, spec, round_, now)
            self.grant_round(session, job, round_)
            session.add(
                Event(
                    job_id=job.id,
                    created_at=now,
                    level="info",
                    type="metrics",
                    message=_round_message(round_, final, dropped),
                    data={  # OpenAI's metrics event fields, then the round's numbers
                        "step": job.rounds_completed,
                        "total_steps": None if spec.finishes_by_epochs() else spec.num_rounds,
                        "valid_loss": round_.eval_loss,
                        **round_summary(round_),
                    },
                )
            )
            if self._is_checkpoint(spec, round_.index, final):
                self._add_checkpoint(session, job, round_, now)
            if job.status != JobStatus.RUNNING.value:
                return True
            if version is not None:
                train_next = self._trains_again(session, job, spec, round_.index + 1)
                if not train_next:
                    self.stop_tasks(session, job, now)  # late tasks have no round left to join
                self.open_round(session, job, round_.index + 1, version, now, train=train_next)
                return True
            job.status = JobStatus.SUCCEEDED.value
            job.finished_at = now
            job.result_params_sha256 = round_.worker_params_sha256
            job.artifacts = artifacts
            self.grant_job(session, job)
            session.add(
                Event(
                    job_id=job.id,
                    created_at=now,
                    level="info",
                    type="message",
                    message=f"job succeeded after {round_.index} rounds: held-out "
                    f"{describe_metrics(job.initial_eval_metrics)} -> "
                    f"{describe_metrics(job.eval_metrics)}; artifacts: "
                    f"{', '.join(sorted(artifacts or {}))}",
                )
            )
        return True

    def _trains_again(self, session: Session, job: Job, spec: JobSpec, index: int) -> bool:
        """Whether round `index` trains, or is the final evaluation."""
        if not spec.finishes_by_epochs():
            return index < spec.num_rounds
        unapplied = session.scalar(
            select(func.count())
            .select_from(Task)
            .where(
                Task.job_id == job.id,
                Task.kind == "train",
                Task.status == TaskStatus.ACCEPTED.value,
                Task.applied_round.is_(None),
            )
        )
        return bool(unapplied) or not spans.data_done(session, job, self._blobs)

    def _settle_unfinished(
        self, session: Session, job: Job, spec: JobSpec, round_: Round, now: float
    ) -> int:
        """Cancel what the closed round leaves behind; returns how many running tasks were
        revoked. Tasks nobody holds are cancelled. Running ones keep going (stale mode) until
        their result could only be applied more than `max_staleness` versions late."""
        horizon = round_.index + 1 - (spec.max_staleness if spec.late_updates == "stale" else 0)
        unfinished = session.scalars(
            select(Task).where(
                Task.job_id == job.id,
                Task.kind == "train",
                Task.status.in_([TaskStatus.PENDING.value, TaskStatus.LEASED.value]),
                or_(
                    Task.round_id == round_.id,
                    Task.round_index < horizon,
                ),
            )
        )
        revoked = 0
        for task in unfinished:
            if task.status == TaskStatus.LEASED.value and task.round_index >= horizon:
                continue  # stale mode: may still be applied by a later round
            revoked += task.status == TaskStatus.LEASED.value
            spans.revoke(session, task, now, requeue=False)
        return revoked

    def stop_tasks(
        self,
        session: Session,
        job: Job,
        now: float,
        *,
        kinds: Iterable[str] = ("train", "evaluate"),
    ) -> None:
        """Cancel every unfinished task of the job (it stopped, or has no round left to run)."""
        for task in session.scalars(
            select(Task).where(
                Task.job_id == job.id,
                Task.kind.in_(list(kinds)),
                Task.status.in_([TaskStatus.PENDING.value, TaskStatus.LEASED.value]),
            )
        ):
            spans.revoke(session, task, now, requeue=False)

    def grant_round(self, session: Session, job: Job, round_: Round) -> None:
        """Grant the credit of the results this round's close used: its evaluation, and the
        train results its step applied."""
        tasks = session.scalars(
            select(Task).where(
                Task.job_id == job.id,
                Task.status == TaskStatus.ACCEPTED.value,
                or_(
                    Task.applied_round == round_.index,
                    (Task.round_id == round_.id) & (Task.kind == "evaluate"),
                ),
            )
        )
        self._grant(session, job, tasks)

    def grant_job(self, session: Session, job: Job) -> None:
        """Grant every accepted result of a job that has ended (honest work is paid)."""
        tasks = session.scalars(
            select(Task).where(Task.job_id == job.id, Task.status == TaskStatus.ACCEPTED.value)
        )
        self._grant(session, job, tasks)

    def _grant(self, session: Session, job: Job, tasks: Iterable[Task]) -> None:
        accounts: dict[str, str] = {}
        for task in tasks:
            worker_id = (task.metrics or {}).get("worker_id") or task.worker_id or ""
            if worker_id not in accounts:
                worker = session.get(Worker, worker_id)
                accounts[worker_id] = (worker.account_id if worker else None) or worker_account(
                    worker_id
                )
            self._ledger.grant(session, task, accounts[worker_id], job.owner)

    @staticmethod
    def _is_checkpoint(spec: JobSpec, version: int, final: bool) -> bool:
        if version == 0:
            return False
        return final or (spec.checkpoint_every > 0 and version % spec.checkpoint_every == 0)

    def _add_checkpoint(self, session: Session, job: Job, round_: Round, now: float) -> None:
        """Keep version `round_.index` (measured by this round's evaluation) as a checkpoint."""
        previous = session.scalars(
            select(Round).where(Round.job_id == job.id, Round.index == round_.index - 1)
        ).first()
        metrics: dict[str, Any] = {"step": round_.index}
        if previous is not None and previous.train_loss is not None:
            metrics["train_loss"] = previous.train_loss
        for key, value in (round_.eval_metrics or {}).items():
            if key != "examples":
                metrics[f"valid_{'mean_' if 'accuracy' in key else ''}{key}"] = value
        session.add(
            Checkpoint(
                id=new_checkpoint_id(job.id, round_.index),
                job_id=job.id,
                version=round_.index,
                step_number=round_.index,
                params_sha256=round_.worker_params_sha256,
                metrics=metrics,
                created_at=now,
            )
        )


HELD_OUT_KEYS = {
    "lm": ("loss",),
    "sft": ("loss", "token_accuracy"),
    "dpo": ("loss", "reward_accuracy", "reward_margin"),
}


def _payload_weights(round_: Round, tasks: list[Task]) -> tuple[list[Task], list[float], float]:
    """The results to average, their weights and the tokens they carry.

    A result weighs its tokens, and a late one counts for less: that discount is not normalized
    away, so a round whose only result is stale takes a smaller step, not a full one in its
    direction. A peer group's payload (see `swarm.client.peers`) weighs the tokens of every
    member that confirmed it; a member whose group's payload is not among `tasks` (it was
    applied in an earlier round) adds nothing."""

    def tokens(task: Task) -> float:
        return float((task.metrics or {}).get("tokens", 1))

    payloads = [t for t in tasks if t.result_sha256]
    weight = {t.id: tokens(t) * staleness_weight(round_.index - t.round_index) for t in payloads}
    total = sum(tokens(t) for t in payloads)
    for task in tasks:
        leader = (task.metrics or {}).get("covered_by")
        if not task.result_sha256 and leader in weight:
            weight[leader] += tokens(task) * staleness_weight(round_.index - task.round_index)
            total += tokens(task)
    return payloads, [weight[t.id] for t in payloads], total


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


def _round_message(round_: Round, final: bool, revoked: int) -> str:
    held_out = describe_metrics(round_.eval_metrics)
    if final:
        return f"final version: held-out {held_out}"
    train = (
        "no train results" if round_.train_loss is None else f"train loss {round_.train_loss:.4f}"
    )
    late = f", {round_.num_late} late results applied" if round_.num_late else ""
    dropped = f", {revoked} unfinished tasks revoked" if revoked else ""
    return f"round {round_.index}: {train}{late}{dropped}; held-out at its start {held_out}"


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
        "num_late": round_.num_late,
        "num_tasks": round_.num_tasks,
        "delta_bytes": round_.delta_bytes,
        "opened_at": round_.opened_at,
        "deadline_at": round_.deadline_at,
        "closed_at": round_.closed_at,
    }
