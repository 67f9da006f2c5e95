"""The coordinator's HTTP API (FastAPI): health, a minimal job API, and the OpenAPI document.

Routes stay thin: they parse, call a service, and shape the answer like OpenAI's fine-tuning
objects. Errors use OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.jobs import JobService
from swarm.coordinator.rounds import round_summary
from swarm.coordinator.storage import Database, Job, Worker
from swarm.protocol.errors import ConfigError, NotFoundError, SwarmError
from swarm.scheduler import JobSpec


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


def job_object(job: Job) -> dict[str, Any]:
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
            "n_epochs": "auto",
            "batch_size": spec.get("batch_size"),
            "learning_rate_multiplier": "auto",
        },
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
                values["dpo_beta" if key == "beta" else str(key)] = value
    values.update(body.hyperparameters)
    if body.seed is not None:
        values["seed"] = body.seed
    return values


def create_app(
    db: Database,
    jobs: JobService,
    catalog: ModelCatalog,
    blobs: BlobStore,
    *,
    started_at: float | None = None,
) -> FastAPI:
    app = FastAPI(
        title="swarm coordinator",
        version="0.1.0",
        description="Volunteer-compute fine-tuning: jobs API and health.",
    )
    started = time.time() if started_at is None else started_at

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc), "invalid_request_error", "not_found")

    @app.exception_handler(ConfigError)
    async def _bad_config(_: Request, exc: ConfigError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request_error", "invalid_value")

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

    @app.post("/v1/fine_tuning/jobs", tags=["jobs"])
    def create_job(body: CreateJobRequest) -> dict[str, Any]:
        """Validate the data and queue a training job."""
        return job_object(jobs.create_job(JobSpec.from_dict(_job_values(body)), body.metadata))

    @app.get("/v1/fine_tuning/jobs", tags=["jobs"])
    def list_jobs(after: str | None = None, limit: int = 20) -> dict[str, Any]:
        """Jobs, newest first, with cursor pagination."""
        if not 1 <= limit <= 100:
            raise ConfigError(f"limit must be in [1, 100], got {limit}")
        page = jobs.list_jobs(after=after, limit=limit)
        return {
            "object": "list",
            "data": [job_object(j) for j in page.jobs],
            "has_more": page.has_more,
        }

    @app.get("/v1/fine_tuning/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str) -> dict[str, Any]:
        return job_object(jobs.get_job(job_id))

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
                }
                for w in workers
            ],
        }

    return app
