"""The coordinator's HTTP API (FastAPI): health, jobs, checkpoints, the queue, credits, and the
OpenAPI document.

Routes stay thin: they parse, call a service, and shape the answer like OpenAI's fine-tuning
objects. Errors use OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, Form, Request, UploadFile
from fastapi import File as FormFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from swarm.coordinator.files import MAX_LIST, Purpose
from swarm.coordinator.jobs import DEFAULT_OWNER
from swarm.coordinator.rounds import round_summary
from swarm.coordinator.scheduling import QueueEntry
from swarm.coordinator.storage import Checkpoint, DataSpan, File, Job, Task, Worker
from swarm.models.datasets import MAX_DATASET_BYTES
from swarm.protocol.errors import ConfigError, NotFoundError, SchedulingError, SwarmError
from swarm.scheduler import (
    MICRO_PER_CREDIT,
    JobSpec,
    check_account,
    worker_account,
)

if TYPE_CHECKING:
    from swarm.coordinator.server import Services


class CreateJobRequest(BaseModel):
    """Body of `POST /v1/fine_tuning/jobs`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="tiny-llama", description="a model from GET /v1/models")
    training_file: str = Field(default="", description="dataset; empty: the method's built-in")
    validation_file: str | None = Field(default=None, description="held-out dataset")
    method: dict[str, Any] | None = Field(
        default=None,
        description='OpenAI\'s {"type": "supervised" | "dpo", "<type>": {"hyperparameters": ...}}',
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="any JobSpec field, e.g. num_rounds, inner_steps"
    )
    seed: int | None = None
    metadata: dict[str, str] | None = None
    owner: str = Field(
        default=DEFAULT_OWNER,
        description="the credits account that pays for the job (user:NAME, or pool:research "
        "for a research job, which runs when the swarm would otherwise idle)",
    )


class CreditsRequest(BaseModel):
    """Body of `POST /v1/swarm/credits/issue` and `/donate`."""

    model_config = ConfigDict(extra="forbid")

    account: str = Field(description="user:NAME, worker:ID or pool:NAME")
    amount: float = Field(
        ge=1e-6, le=1e12, description="credits, at least 0.000001 (1 credit = 10^15 FLOPs)"
    )
    memo: str = Field(default="", max_length=500)

    def micro(self) -> int:
        return round(self.amount * MICRO_PER_CREDIT)


def credits(micro: int) -> float:
    return micro / MICRO_PER_CREDIT


def job_object(job: Job, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as an OpenAI `fine_tuning.job`, with swarm's numbers under `swarm`."""
    spec = job.spec
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": job.model,
        "created_at": int(job.created_at),
        "finished_at": int(job.finished_at) if job.finished_at else None,
        "fine_tuned_model": job.id if job.artifacts else None,
        "organization_id": "swarm",
        "status": job.status,
        "training_file": spec.get("dataset"),
        "validation_file": spec.get("validation_dataset") or None,
        "hyperparameters": {
            "n_epochs": spec.get("num_epochs") or "auto",
            "batch_size": spec.get("batch_size"),
            "learning_rate_multiplier": "auto",
        },
        "estimated_finish": None,
        "result_files": [],
        "trained_tokens": job.trained_tokens,
        "error": job.error,
        "seed": spec.get("seed"),
        "metadata": job.metadata_,
        "swarm": {
            "spec": spec,
            "rounds_completed": job.rounds_completed,
            "num_rounds": spec.get("num_rounds"),
            "num_trainable_params": job.num_trainable_params,
            "initial_eval_loss": job.initial_eval_loss,
            "eval_loss": job.eval_loss,
            "initial_eval_metrics": job.initial_eval_metrics,
            "eval_metrics": job.eval_metrics,
            "artifacts": sorted(job.artifacts or {}),
            "result_params_sha256": job.result_params_sha256,
            "owner": job.owner,
            "priority": spec.get("priority", 0),
            "estimated_credits": credits(job.estimated_credits),
            "data_epoch": job.data_epoch,
            "num_samples": sum(job.shard_samples or []),
            **(extra or {}),
        },
    }


def _error(
    status: int, message: str, type_: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": param, "code": code}},
    )


METHOD_TYPES = {"supervised": "sft", "dpo": "dpo", "lm": "lm"}
# OpenAI's hyperparameter names -> JobSpec fields.
OPENAI_HYPERPARAMETERS = {"beta": "dpo_beta", "n_epochs": "num_epochs"}


def _job_values(body: CreateJobRequest) -> dict[str, Any]:
    """JobSpec fields from a request: OpenAI's `method` object, then swarm's hyperparameters."""
    values: dict[str, Any] = {"model": body.model}
    if body.training_file:
        values["dataset"] = body.training_file
    if body.validation_file:
        values["validation_dataset"] = body.validation_file
    if body.method is not None:
        kind = body.method.get("type")
        if not isinstance(kind, str) or kind not in METHOD_TYPES:
            raise ConfigError(
                f"method.type must be one of {sorted(METHOD_TYPES)}, got {kind!r:.80}"
            )
        values["method"] = METHOD_TYPES[kind]
        settings = body.method.get(kind) or {}
        hyper = settings.get("hyperparameters") or {} if isinstance(settings, dict) else None
        if not isinstance(hyper, dict):
            raise ConfigError(f"method.{kind} must be an object with a hyperparameters object")
        for key, value in hyper.items():
            if value != "auto":
                values[OPENAI_HYPERPARAMETERS.get(str(key), str(key))] = value
    values.update(body.hyperparameters)
    if body.seed is not None:
        values["seed"] = body.seed
    return values


_MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may carry beyond its file (boundaries, headers, the purpose)."""


def _too_large() -> JSONResponse:
    return _error(
        413,
        f"the file is over the limit of {MAX_DATASET_BYTES:,} bytes; split it or sample it down",
        "invalid_request_error",
        "file_too_large",
        "file",
    )


def cursor_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list envelope for cursor-paged objects."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def file_object(file: File) -> dict[str, Any]:
    """An OpenAI `file` object, with what the swarm learnt of its lines under `swarm`."""
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": int(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
        "swarm": {"kind": file.kind, "num_examples": file.num_examples, "sha256": file.sha256},
    }


def create_app(services: Services, *, started_at: float | None = None) -> FastAPI:
    db, jobs, catalog, blobs = services.db, services.jobs, services.catalog, services.blobs
    ledger, scheduler, files = services.ledger, services.scheduler, services.files
    app = FastAPI(
        title="swarm coordinator",
        version="0.1.0",
        description="Volunteer-compute fine-tuning: jobs, checkpoints, queue, credits, health.",
    )
    app.state.servicer = services.servicer
    app.state.services = services
    started = time.time() if started_at is None else started_at

    def describe(job: Job, queue: dict[str, QueueEntry] | None = None) -> dict[str, Any]:
        """A job object with its queue position and what it has cost so far (`queue`: the
        queue, when the caller already has it)."""
        spent = jobs.spending(job.id)
        extra: dict[str, Any] = {
            "credits_consumed": credits(spent["consumed"]),
            "credits_pending": credits(spent["pending"]),
            "queue_position": None,
            "queue_reason": None,
        }
        if job.status == "queued":
            if queue is None:
                queue = {e.job_id: e for e in scheduler.queue()}
            entry = queue.get(job.id)
            if entry is not None:
                extra["queue_position"], extra["queue_reason"] = entry.position, entry.reason
        return job_object(job, extra)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc), "invalid_request_error", "not_found")

    @app.exception_handler(ConfigError)
    async def _bad_config(_: Request, exc: ConfigError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request_error", "invalid_value")

    @app.exception_handler(SchedulingError)
    async def _conflict(_: Request, exc: SchedulingError) -> JSONResponse:
        return _error(409, str(exc), "invalid_request_error", "invalid_state")

    @app.exception_handler(SwarmError)
    async def _swarm_error(_: Request, exc: SwarmError) -> JSONResponse:
        return _error(409, str(exc), "invalid_request_error", exc.grpc_code.lower())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(
            400,
            f"{param or 'request'}: {first.get('msg', 'invalid request')}",
            "invalid_request_error",
            "invalid_request",
            param,
        )

    @app.get("/healthz", tags=["health"])
    def health() -> dict[str, Any]:
        """Liveness and the state of the database."""
        ping_ms = db.ping_s() * 1000
        with db.transaction() as session:
            online = (
                session.scalar(
                    select(func.count())
                    .select_from(Worker)
                    .where(Worker.last_seen_at >= time.time() - 30)
                )
                or 0
            )
        return {
            "status": "ok",
            "database": "ok",
            "database_latency_ms": round(ping_ms, 3),
            "workers_online": online,
            "jobs": jobs.count_by_status(),
            "uptime_s": round(time.time() - started, 1),
        }

    @app.middleware("http")
    async def _refuse_oversize_uploads(request: Request, call_next: Any) -> Any:
        """An upload that says it is too large is refused before its body is read."""
        if request.method == "POST" and request.url.path == "/v1/files":
            try:
                declared = int(request.headers.get("content-length") or 0)
            except ValueError:
                declared = 0
            if declared > MAX_DATASET_BYTES + _MULTIPART_SLACK:
                return _too_large()
        return await call_next(request)

    @app.post("/v1/files", tags=["files"])
    def upload_file(
        file: Annotated[UploadFile, FormFile(description="the JSONL dataset")],
        purpose: Annotated[Purpose, Form()],
    ) -> Any:
        """Upload a fine-tuning dataset. Every line is checked as the jobs will read it: chat
        examples (supervised) or preference pairs (DPO); a bad line is a 400 that names it."""
        data = file.file.read(MAX_DATASET_BYTES + 1)
        if len(data) > MAX_DATASET_BYTES:
            return _too_large()
        try:
            stored = files.upload(
                data, filename=file.filename or "", purpose=purpose, owner=DEFAULT_OWNER
            )
        except ConfigError as exc:
            return _error(400, str(exc), "invalid_request_error", "invalid_file", "file")
        return file_object(stored)

    @app.get("/v1/files", tags=["files"])
    def list_files(
        purpose: str | None = None,
        after: str | None = None,
        limit: int = MAX_LIST,
        order: Literal["asc", "desc"] = "desc",
    ) -> dict[str, Any]:
        """Uploaded files, newest first (`order=asc`: oldest first), with cursor pagination."""
        found, has_more = files.list(purpose=purpose, after=after, limit=limit, order=order)
        return cursor_page([file_object(f) for f in found], has_more)

    @app.get("/v1/files/{file_id}", tags=["files"])
    def get_file(file_id: str) -> dict[str, Any]:
        return file_object(files.get(file_id))

    @app.get("/v1/files/{file_id}/content", tags=["files"])
    def file_content(file_id: str) -> Response:
        """The file's bytes, exactly as uploaded."""
        return Response(
            files.content(file_id),
            media_type="application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{file_id}.jsonl"'},
        )

    @app.delete("/v1/files/{file_id}", tags=["files"])
    def delete_file(file_id: str) -> dict[str, Any]:
        """Delete a file; jobs already created from it keep their data."""
        return {"id": files.delete(file_id).id, "object": "file", "deleted": True}

    @app.post("/v1/fine_tuning/jobs", tags=["jobs"])
    def create_job(body: CreateJobRequest) -> dict[str, Any]:
        """Check the settings, the model and every line of the data, then validate and queue
        the job (it starts as `validating_files`)."""
        spec = JobSpec.from_dict(_job_values(body))
        return describe(jobs.create_job(spec, body.metadata, owner=body.owner))

    @app.get("/v1/fine_tuning/jobs", tags=["jobs"])
    def list_jobs(after: str | None = None, limit: int = 20) -> dict[str, Any]:
        """Jobs, newest first, with cursor pagination."""
        if not 1 <= limit <= 100:
            raise ConfigError(f"limit must be in [1, 100], got {limit}")
        page = jobs.list_jobs(after=after, limit=limit)
        queue = {e.job_id: e for e in scheduler.queue()} if page.jobs else {}
        return {
            "object": "list",
            "data": [describe(j, queue) for j in page.jobs],
            "has_more": page.has_more,
        }

    @app.get("/v1/fine_tuning/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str) -> dict[str, Any]:
        return describe(jobs.get_job(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: str) -> dict[str, Any]:
        """Stop the job for good; accepted work is still paid for."""
        return describe(jobs.cancel(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause", tags=["jobs"])
    def pause_job(job_id: str) -> dict[str, Any]:
        """Stop handing out the job's tasks; running ones are revoked and run again later."""
        return describe(jobs.pause(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume", tags=["jobs"])
    def resume_job(job_id: str) -> dict[str, Any]:
        return describe(jobs.resume(job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", tags=["jobs"])
    def list_checkpoints(job_id: str, after: str | None = None, limit: int = 10) -> dict[str, Any]:
        """Kept versions, newest first; `model` of a new job may name one to start from it."""
        if not 1 <= limit <= 100:
            raise ConfigError(f"limit must be in [1, 100], got {limit}")
        rows, has_more = jobs.list_checkpoints(job_id, after=after, limit=limit)
        return cursor_page([checkpoint_object(c) for c in rows], has_more)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events", tags=["jobs"])
    def list_events(job_id: str, limit: int = 100) -> dict[str, Any]:
        """The job's events, newest first."""
        events = jobs.list_events(job_id, limit=max(1, min(limit, 1000)))
        return {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "object": "fine_tuning.job.event",
                    "id": f"ftevent-{e.id}",
                    "created_at": int(e.created_at),
                    "level": e.level,
                    "message": e.message,
                    "type": e.type,
                    "data": e.data,
                }
                for e in events
            ],
        }

    @app.get("/v1/swarm/jobs/{job_id}/rounds", tags=["swarm"])
    def list_rounds(job_id: str) -> dict[str, Any]:
        """Per-round numbers: losses, tokens, bytes up and down, clients."""
        rounds = jobs.list_rounds(job_id)
        accepted = jobs.tasks_accepted(job_id)
        return {
            "object": "list",
            "data": [
                {**round_summary(r), "tasks_accepted": accepted.get(r.index, 0)} for r in rounds
            ],
        }

    @app.get("/v1/swarm/jobs/{job_id}/tasks", tags=["swarm"])
    def list_tasks(job_id: str) -> dict[str, Any]:
        """Every task of a job: kind, state, the worker, its data span and inner steps."""
        return {
            "object": "list",
            "data": [task_object(t, spans) for t, spans in jobs.list_tasks(job_id)],
        }

    @app.get("/v1/swarm/queue", tags=["swarm"])
    def queue() -> dict[str, Any]:
        """Queued jobs in the order they will start, with why each one waits."""
        return {
            "object": "list",
            "data": [
                {"job_id": e.job_id, "position": e.position, "reason": e.reason}
                for e in scheduler.queue()
            ],
        }

    @app.get("/v1/swarm/credits", tags=["credits"])
    def account_credits(account: str, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        """An account's granted and pending credits and its recent entries, newest first."""
        check_account(account)
        if not 1 <= limit <= 500:
            raise ConfigError(f"limit must be in [1, 500], got {limit}")
        with db.transaction() as session:
            statement = ledger.statement(session, account)
            history = ledger.history(session, account, limit=limit, before=before)
        return {
            "object": "swarm.credits",
            "account": account,
            "balance": credits(statement["balance"]),
            "pending": credits(statement["pending"]),
            "history": [{**h, "amount": credits(h["amount"])} for h in history],
        }

    @app.get("/v1/swarm/credits/leaderboard", tags=["credits"])
    def leaderboard(limit: int = 20) -> dict[str, Any]:
        """Accounts by granted credits, and the research pool."""
        with db.transaction() as session:
            rows = ledger.leaderboard(session, limit=max(1, min(limit, 100)))
            pool = ledger.balance(session, "pool:research")
        return {
            "object": "list",
            "data": [{**r, "balance": credits(r["balance"])} for r in rows],
            "research_pool": credits(pool),
        }

    @app.get("/v1/swarm/ledger", tags=["credits"])
    def ledger_totals() -> dict[str, Any]:
        """The ledger's invariant: the sum of all balances equals every credit ever minted."""
        with db.transaction() as session:
            totals = ledger.totals(session)
            mismatched = ledger.check_balances(session)
        return {
            "object": "swarm.ledger",
            "minted": credits(totals.minted),
            "balances": credits(totals.balances),
            "minted_micro": totals.minted,
            "balances_micro": totals.balances,
            "accounts": totals.accounts,
            "balanced": totals.balanced and not mismatched,
            "mismatched_accounts": mismatched,
        }

    @app.post("/v1/swarm/credits/issue", tags=["credits"])
    def issue_credits(body: CreditsRequest) -> dict[str, Any]:
        """Give an account credits (the operator's grant); they are minted."""
        with db.transaction() as session:
            ledger.issue(session, check_account(body.account), body.micro(), body.memo)
        return account_credits(body.account, limit=1)

    @app.post("/v1/swarm/credits/donate", tags=["credits"])
    def donate_credits(body: CreditsRequest) -> dict[str, Any]:
        """Move credits from an account to the research pool."""
        with db.transaction() as session:
            ledger.donate(session, check_account(body.account), body.micro())
        return account_credits(body.account, limit=1)

    @app.get("/v1/swarm/jobs/{job_id}/artifacts", tags=["swarm"])
    def list_artifacts(job_id: str) -> dict[str, Any]:
        """The results of a succeeded job: `adapter` (PEFT) and `merged` (HF folder) files."""
        job = jobs.get_job(job_id)
        return {
            "object": "list",
            "data": [
                {
                    "kind": kind,
                    "files": [
                        {"path": path, "sha256": sha, "bytes": blobs.size(sha)}
                        for path, sha in sorted(artifact["files"].items())
                    ],
                }
                for kind, artifact in sorted((job.artifacts or {}).items())
            ],
        }

    @app.get("/v1/swarm/jobs/{job_id}/artifacts/{kind}/{path:path}", tags=["swarm"])
    def download_artifact(job_id: str, kind: str, path: str) -> FileResponse:
        """One file of an artifact, e.g. `merged/model.safetensors`."""
        files = ((jobs.get_job(job_id).artifacts or {}).get(kind) or {}).get("files", {})
        if path not in files:
            raise NotFoundError(f"job {job_id} has no artifact file {kind}/{path}")
        return FileResponse(
            blobs.path(files[path]),
            filename=path.rsplit("/", 1)[-1],
            media_type="application/octet-stream",
        )

    @app.get("/v1/models", tags=["models"])
    def list_models() -> dict[str, Any]:
        """Base models this coordinator can train, and the fine-tuned results."""
        return {
            "object": "list",
            "data": [
                {
                    "id": row["name"],
                    "object": "model",
                    "created": int(row.get("created_at") or started),
                    "owned_by": "swarm",
                    "swarm": row,
                }
                for row in catalog.list()
            ],
        }

    @app.get("/v1/swarm/workers", tags=["swarm"])
    def list_workers() -> dict[str, Any]:
        """Registered workers with their hardware and counts."""
        with db.transaction() as session:
            workers = list(session.scalars(select(Worker).order_by(Worker.registered_at)))
        now = time.time()
        return {
            "object": "list",
            "data": [
                {
                    "id": w.id,
                    "name": w.name,
                    "hardware": w.hardware,
                    "online": now - w.last_seen_at < 30,
                    "last_seen_at": w.last_seen_at,
                    "tasks_accepted": w.tasks_accepted,
                    "tasks_failed": w.tasks_failed,
                    "account": w.account_id or worker_account(w.id),
                    "assigned_job_id": w.assigned_job_id,
                    "flops_per_s": w.flops_per_s,
                    "download_bytes_per_s": w.download_bytes_per_s,
                }
                for w in workers
            ],
        }

    return app


def checkpoint_object(checkpoint: Checkpoint) -> dict[str, Any]:
    """A checkpoint as an OpenAI `fine_tuning.job.checkpoint`."""
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": checkpoint.id,
        "created_at": int(checkpoint.created_at),
        "fine_tuned_model_checkpoint": checkpoint.id,
        "fine_tuning_job_id": checkpoint.job_id,
        "step_number": checkpoint.step_number,
        "metrics": checkpoint.metrics,
        "swarm": {"version": checkpoint.version, "params_sha256": checkpoint.params_sha256},
    }


def task_object(task: Task, spans: list[DataSpan]) -> dict[str, Any]:
    return {
        "id": task.id,
        "round": task.round_index,
        "index": task.index,
        "kind": task.kind,
        "status": task.status,
        "attempts": task.attempts,
        "seed": task.seed,
        "worker_id": task.worker_id,
        "inner_steps": task.inner_steps,
        "spans": [
            {
                "epoch": span.epoch,
                "shard": span.shard,
                "start": span.start,
                "stop": span.stop,
                "state": span.state,
            }
            for span in spans
        ],
        "applied_round": task.applied_round,
        "credits": credits(task.credits or 0),
        "metrics": task.metrics,
    }
