"""Creating jobs and reading them back.

Creating a job does all the work that can fail on the user's input before anything is queued:
validate the spec, load and tokenize the text once, cut it into content-addressed token shards
and a held-out set, build the initial parameters, and open round 0.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select

from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.rounds import RoundService, evaluate_version
from swarm.coordinator.storage import Database, Event, Job, Round
from swarm.models import (
    build_model,
    config_to_bytes,
    count_parameters,
    encode_shard,
    encode_text,
    load_builtin_text,
    parameter_shapes,
    preset_config,
    split_tokens,
    state_to_bytes,
    trainable_state,
)
from swarm.protocol.errors import ConfigError, NotFoundError
from swarm.scheduler import JobSpec, JobStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class JobPage:
    jobs: list[Job]
    has_more: bool


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def prepare_tokens(spec: JobSpec) -> tuple[list[np.ndarray], np.ndarray]:
    """Tokenize a job's dataset into its training shards and its held-out tail."""
    tokens = encode_text(load_builtin_text(spec.dataset))
    num_heldout = max(int(len(tokens) * spec.heldout_fraction), spec.seq_len + 1)
    shards = split_tokens(tokens[:-num_heldout], spec.num_shards)
    if min(len(s) for s in shards) < spec.seq_len + 1:
        raise ConfigError(
            f"num_shards={spec.num_shards} leaves shards shorter than seq_len + 1 = "
            f"{spec.seq_len + 1} tokens; use fewer shards or a shorter seq_len"
        )
    return shards, tokens[-num_heldout:]


class JobService:
    def __init__(self, db: Database, blobs: BlobStore, rounds: RoundService) -> None:
        self._db = db
        self._blobs = blobs
        self._rounds = rounds

    def create_job(self, spec: JobSpec, metadata: dict[str, str] | None = None) -> Job:
        """Validate and prepare a job, then queue it with round 0 open."""
        config = preset_config(spec.model)
        shards, heldout = prepare_tokens(spec)
        model = build_model(config, seed=spec.seed)
        config_sha = self._blobs.put_bytes(config_to_bytes(config))
        heldout_sha = self._blobs.put_bytes(encode_shard(heldout))
        shard_shas = [self._blobs.put_bytes(encode_shard(s)) for s in shards]
        params_sha = self._blobs.put_bytes(state_to_bytes(trainable_state(model)))
        initial_loss = evaluate_version(model, np.asarray(heldout, dtype=np.int64), spec.seq_len)

        now = time.time()
        job = Job(
            id=new_id("ftjob"),
            status=JobStatus.QUEUED.value,
            model=spec.model,
            spec=spec.to_dict(),
            created_at=now,
            metadata_=metadata,
            model_config_sha256=config_sha,
            heldout_sha256=heldout_sha,
            shard_sha256s=shard_shas,
            param_shapes={n: list(s) for n, s in parameter_shapes(model).items()},
            num_trainable_params=count_parameters(model),
            tasks_created=0,
            rounds_completed=0,
            trained_tokens=0,
            initial_eval_loss=initial_loss,
        )
        with self._db.transaction() as session:
            session.add(job)
            session.flush()
            add_event(
                session,
                job.id,
                f"validated {sum(len(s) for s in shards) + len(heldout)} tokens into {len(shards)} "
                f"shards and {len(heldout)} held-out tokens; model {spec.model} has "
                f"{job.num_trainable_params} trainable parameters",
            )
            self._rounds.start_job(session, job, params_sha, now)
        logger.info(
            "job %s created: model %s, %d rounds, held-out loss %.4f",
            job.id,
            spec.model,
            spec.num_rounds,
            initial_loss,
        )
        return job

    def get_job(self, job_id: str) -> Job:
        with self._db.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r}")
            return job

    def list_jobs(self, *, after: str | None = None, limit: int = 20) -> JobPage:
        """Newest first; `after` is the id of the last job of the previous page."""
        with self._db.transaction() as session:
            query = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
            if after is not None:
                anchor = session.get(Job, after)
                if anchor is None:
                    raise NotFoundError(f"no job {after!r} to page after")
                query = query.where(
                    (Job.created_at < anchor.created_at)
                    | ((Job.created_at == anchor.created_at) & (Job.id < anchor.id))
                )
            jobs = list(session.scalars(query.limit(limit + 1)))
        return JobPage(jobs=jobs[:limit], has_more=len(jobs) > limit)

    def list_rounds(self, job_id: str) -> list[Round]:
        self.get_job(job_id)
        with self._db.transaction() as session:
            return list(
                session.scalars(select(Round).where(Round.job_id == job_id).order_by(Round.index))
            )

    def list_events(self, job_id: str, limit: int = 100) -> list[Event]:
        self.get_job(job_id)
        with self._db.transaction() as session:
            return list(
                session.scalars(
                    select(Event)
                    .where(Event.job_id == job_id)
                    .order_by(Event.id.desc())
                    .limit(limit)
                )
            )

    def count_by_status(self) -> dict[str, int]:
        with self._db.transaction() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
            return {status: count for status, count in rows}


def add_event(
    session: Any,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type_: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        Event(
            job_id=job_id,
            created_at=time.time(),
            level=level,
            type=type_,
            message=message,
            data=data,
        )
    )
