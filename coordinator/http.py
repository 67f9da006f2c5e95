"""The coordinator's HTTP API (FastAPI): files, jobs, checkpoints, models, the queue, credits,
keys, health, and the OpenAPI document.

Routes stay thin: they parse, call a service, and shape the answer like OpenAI's fine-tuning
objects. Errors use OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`.

Every `/v1` route needs an API key (`Authorization: Bearer sk-swarm-...`, see `keys.py`); a
researcher sees only their own files, jobs and fine-tuned models, and another user's object
answers 404 exactly as a missing one does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, UploadFile
from fastapi import File as FormFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from swarm.coordinator.dashboard import mount_dashboard, swarm_numbers
from swarm.coordinator.files import MAX_LIST, Purpose, is_file_id
from swarm.coordinator.keys import LOCAL_OPERATOR, Caller, Role
from swarm.coordinator.metrics import instrument_http, metrics_router
from swarm.coordinator.rounds import round_summary
from swarm.coordinator.scheduling import QueueEntry
from swarm.coordinator.storage import ApiKey, Checkpoint, DataSpan, File, Job, Task, Worker
from swarm.coordinator.storage import online as is_online
from swarm.models.datasets import MAX_DATASET_BYTES
from swarm.protocol.errors import (
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    SchedulingError,
    SwarmError,
    UnauthenticatedError,
)
from swarm.scheduler import (
    MICRO_PER_CREDIT,
    JobSpec,
    check_account,
    worker_account,
)
from swarm.scheduler.jobs import default_learning_rate

if TYPE_CHECKING:
    from swarm.coordinator.server import Services

logger = logging.getLogger(__name__)


class CreateJobRequest(BaseModel):
    """Body of `POST /v1/fine_tuning/jobs`. Any other top-level field must be a swarm
    hyperparameter (`lora_rank`, `inner_steps`, ...), as OpenAI SDKs send `extra_body`."""

    model_config = ConfigDict(extra="allow")

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
    suffix: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="up to 64 letters, digits and . _ -, added to the fine-tuned model's name",
    )
    seed: int | None = None
    metadata: dict[str, str] | None = None
    owner: str | None = Field(
        default=None,
        description="the credits account that pays for the job: the caller's own (default); "
        "operators may name any, e.g. pool:research for a research job, which runs when the "
        "swarm would otherwise idle",
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


def fine_tuned_model(job: Job) -> str | None:
    """OpenAI's name for a job's result, `ft:BASE:OWNER:SUFFIX:JOB` (None until it exists)."""
    if not job.artifacts:
        return None
    return f"ft:{job.model}:{job.owner.partition(':')[2]}:{job.suffix or ''}:{job.id}"


def _hyperparameters(spec: dict[str, Any]) -> dict[str, Any]:
    """The job's settings under OpenAI's names, resolved (no `auto` left)."""
    default_lr = default_learning_rate(spec["method"], spec["adapter"])
    values: dict[str, Any] = {
        "n_epochs": spec["num_epochs"] or "auto",
        "batch_size": spec["batch_size"],
        "learning_rate_multiplier": round(spec["inner_lr"] / default_lr, 6),
    }
    if spec["method"] == "dpo":
        values["beta"] = spec["dpo_beta"]
    return values


def job_object(job: Job, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as an OpenAI `fine_tuning.job`, with swarm's numbers under `swarm`."""
    spec = job.spec
    hyperparameters = _hyperparameters(spec)
    method = OPENAI_METHODS[spec["method"]]
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": job.model,
        "created_at": int(job.created_at),
        "finished_at": int(job.finished_at) if job.finished_at else None,
        "fine_tuned_model": fine_tuned_model(job),
        "organization_id": job.owner,
        "status": job.status,
        "training_file": spec.get("dataset"),
        "validation_file": spec.get("validation_dataset") or None,
        "hyperparameters": hyperparameters,
        "method": {"type": method, method: {"hyperparameters": hyperparameters}},
        "estimated_finish": None,
        "integrations": [],
        "result_files": [],
        "trained_tokens": job.trained_tokens,
        "error": job.error,
        "seed": spec.get("seed"),
        "metadata": job.metadata_,
        "user_provided_suffix": job.suffix,
        "swarm": {
            "spec": spec,
            "rounds_completed": job.rounds_completed,
            "num_rounds": spec.get("num_rounds"),
            "total_rounds": None if spec["num_epochs"] else spec["num_rounds"],
            "started_at": job.started_at,
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
OPENAI_METHODS = {method: kind for kind, method in METHOD_TYPES.items()}
# OpenAI's hyperparameter names -> JobSpec fields (learning_rate_multiplier scales inner_lr).
OPENAI_HYPERPARAMETERS = {"beta": "dpo_beta", "n_epochs": "num_epochs"}
_SPEC_FIELDS = frozenset(f.name for f in dataclasses.fields(JobSpec))


def _openai_names(hyper: dict[str, Any], values: dict[str, Any]) -> None:
    """Copy hyperparameters into `values` as JobSpec fields; `auto` leaves the default."""
    for key, value in hyper.items():
        if value != "auto":
            values[OPENAI_HYPERPARAMETERS.get(str(key), str(key))] = value


def job_spec(body: CreateJobRequest) -> JobSpec:
    """The JobSpec a request asks for: OpenAI's `method` object, then the hyperparameters, then
    swarm fields given at the top level (OpenAI SDKs' `extra_body`)."""
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
        _openai_names(hyper, values)
    _openai_names(body.hyperparameters, values)
    extra = body.model_extra or {}
    unknown = sorted(set(extra) - _SPEC_FIELDS)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown}: not OpenAI's, nor a swarm hyperparameter")
    values.update(extra)
    if body.seed is not None:
        values["seed"] = body.seed
    multiplier = values.pop("learning_rate_multiplier", None)
    spec = JobSpec.from_dict(values)
    if multiplier is None:
        return spec
    if "inner_lr" in values:
        raise ConfigError("learning_rate_multiplier: give it or inner_lr, not both")
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
        raise ConfigError(f"learning_rate_multiplier must be a number, got {multiplier!r:.40}")
    if not 0 < multiplier <= 100:
        raise ConfigError(f"learning_rate_multiplier must be in (0, 100], got {multiplier}")
    base = default_learning_rate(spec.method, spec.adapter)
    return dataclasses.replace(spec, inner_lr=base * multiplier)


_PARAMS = _SPEC_FIELDS | {
    "training_file",
    "validation_file",
    "learning_rate_multiplier",
    "method.type",
    "model",
}
_OPENAI_PARAMS = {"dataset": "training_file", "validation_dataset": "validation_file"}
_OPENAI_PARAMS.update({spec: name for name, spec in OPENAI_HYPERPARAMETERS.items()})


def param_of(message: str) -> str | None:
    """The request field an error message starts with (OpenAI's `param`), if it names one."""
    first = message.split(" ", 1)[0].rstrip(":,")
    if first not in _PARAMS:
        return None
    return _OPENAI_PARAMS.get(first, first)


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


_bearer = HTTPBearer(
    auto_error=False, description="an API key (`sk-swarm-...`) made by `swarm keys create`"
)
_PROXY_HEADERS = (
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
    "cf-connecting-ip",
    "true-client-ip",
)
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _is_local(request: Request) -> bool:
    """A request from a program on this machine: a loopback peer that named a loopback host
    (a DNS-rebinding page names its own), relayed by no proxy, and sent by no web page (a
    browser adds `Origin` or `Sec-Fetch-Site` to what a page sends; the CLI and SDKs do not)."""
    headers = request.headers
    if request.client is None or any(h in headers for h in (*_PROXY_HEADERS, "origin")):
        return False
    if headers.get("sec-fetch-site", "none") != "none":
        return False
    host = headers.get("host", "").lower()
    if host.rsplit(":", 1)[0] not in _LOCAL_HOSTS and host not in _LOCAL_HOSTS:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller of a `/v1` request, from its API key (or setup mode's local operator)."""
    keys = request.app.state.services.keys
    if credentials is not None:
        address = request.client.host if request.client else ""
        return keys.authenticate(credentials.credentials, address)  # type: ignore[no-any-return]
    if not keys.has_keys() and _is_local(request):
        return LOCAL_OPERATOR
    raise UnauthenticatedError(
        "no API key given: send `Authorization: Bearer sk-swarm-...` (set SWARM_API_KEY for "
        "the swarm CLI, api_key= for OpenAI SDKs); an operator makes keys with `swarm keys create`"
    )


CallerDep = Annotated[Caller, Depends(authenticate)]


def require_operator(caller: CallerDep) -> Caller:
    if not caller.is_operator:
        raise PermissionDeniedError(
            "only an operator's API key may do this; yours is a researcher's"
        )
    return caller


OperatorDep = Annotated[Caller, Depends(require_operator)]


class ReasonRequest(BaseModel):
    """Body of a ban or a drain: why, for the log, the dashboard and the workers."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=200)


class CreateKeyRequest(BaseModel):
    """Body of `POST /v1/swarm/keys`."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(description="whose key: NAME or user:NAME (their credits account)")
    role: Role = "researcher"
    name: str = Field(default="", max_length=100, description="a label, e.g. the laptop's name")


def key_object(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    """An API key without its secret (`secret`: shown once, when it is created)."""
    return {
        "object": "swarm.api_key",
        "id": key.id,
        "user": key.account,
        "role": key.role,
        "name": key.name,
        "hint": key.hint,
        "created_at": int(key.created_at),
        "last_used_at": int(key.last_used_at) if key.last_used_at else None,
        "revoked": key.revoked_at is not None,
        **({"key": secret} if secret is not None else {}),
    }


def _limit(limit: int, high: int) -> int:
    if not 1 <= limit <= high:
        raise ConfigError(f"limit must be in [1, {high}], got {limit}")
    return limit


def create_app(services: Services, *, started_at: float | None = None) -> FastAPI:
    db, jobs, catalog, blobs = services.db, services.jobs, services.catalog, services.blobs
    ledger, scheduler, files, keys = (
        services.ledger,
        services.scheduler,
        services.files,
        services.keys,
    )
    app = FastAPI(
        title="swarm coordinator",
        version="0.1.0",
        description="Volunteer-compute fine-tuning, OpenAI-compatible: files, jobs, events, "
        "checkpoints, models; and the swarm's own: queue, rounds, artifacts, credits, keys.",
    )
    app.state.servicer = services.servicer
    app.state.services = services
    api = APIRouter(dependencies=[Depends(authenticate)])
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

    def own_job(job_id: str, caller: Caller) -> Job:
        """The job, if the caller may see it; another user's job is as missing as no job."""
        job = jobs.get_job(job_id)
        if not caller.sees(job.owner):
            raise NotFoundError(f"no job {job_id!r}")
        return job

    def check_sources(spec: JobSpec, caller: Caller) -> JobSpec:
        """The caller's job may start only from their own files and models."""
        for field, source in (
            ("training_file", spec.dataset),
            ("validation_file", spec.validation_dataset),
        ):
            if is_file_id(source):
                try:
                    files.get(source, owner=caller.owner_filter)
                except NotFoundError:
                    raise ConfigError(
                        f"{field}: no file {source!r:.80}; upload one with POST /v1/files"
                    ) from None
        model = spec.model
        try:
            if model.startswith("ft:"):  # a fine-tuned model: the catalog has it by job id
                job = own_job(model.rsplit(":", 1)[-1], caller)
                if fine_tuned_model(job) != model:
                    raise NotFoundError(model)
                spec = dataclasses.replace(spec, model=job.id)
            # Whose a stored model is, its manifest says (not its name, which a
            # case-insensitive file system may match in another spelling).
            manifest = catalog.manifest(spec.model)
            if manifest is None and spec.model.startswith("ftckpt-"):  # not stored yet
                own_job(jobs.get_checkpoint(spec.model).job_id, caller)
            elif manifest is not None:
                if manifest.get("name", spec.model) != spec.model:
                    raise NotFoundError(model)
                source = str(manifest.get("source") or "")
                if source.startswith("job:"):
                    own_job(source.removeprefix("job:"), caller)
        except NotFoundError:
            raise ConfigError(
                f"model: no fine-tuned model or checkpoint {model!r:.120} of yours"
            ) from None
        return spec

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc), "invalid_request_error", "not_found")

    @app.exception_handler(ConfigError)
    async def _bad_config(_: Request, exc: ConfigError) -> JSONResponse:
        message = str(exc)
        param = exc.param or param_of(message)
        return _error(400, message, "invalid_request_error", "invalid_value", param)

    @app.exception_handler(UnauthenticatedError)
    async def _unauthenticated(_: Request, exc: UnauthenticatedError) -> JSONResponse:
        response = _error(401, str(exc), "invalid_request_error", "invalid_api_key")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RateLimitedError)
    async def _rate_limited(_: Request, exc: RateLimitedError) -> JSONResponse:
        response = _error(429, str(exc), "requests", "rate_limit_exceeded")
        response.headers["Retry-After"] = str(round(exc.retry_after_s))
        return response

    @app.exception_handler(PermissionDeniedError)
    async def _forbidden(_: Request, exc: PermissionDeniedError) -> JSONResponse:
        return _error(403, str(exc), "invalid_request_error", "insufficient_permissions")

    @app.exception_handler(SchedulingError)
    async def _conflict(_: Request, exc: SchedulingError) -> JSONResponse:
        return _error(409, str(exc), "invalid_request_error", "invalid_state")

    @app.exception_handler(SwarmError)
    async def _swarm_error(_: Request, exc: SwarmError) -> JSONResponse:
        return _error(409, str(exc), "invalid_request_error", exc.grpc_code.lower())

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        """Ours, not the caller's: logged with its traceback, answered in OpenAI's shape."""
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "the coordinator failed on this request; see its log", "server_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing's own errors (no such path, a method it does not take), OpenAI-shaped."""
        response = _error(exc.status_code, str(exc.detail), "invalid_request_error", None)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

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
        """Liveness and the state of the database (no API key needed)."""
        ping_ms = db.ping_s() * 1000
        with db.transaction() as session:
            online = (
                session.scalar(
                    select(func.count())
                    .select_from(Worker)
                    .where(is_online(time.time(), services.settings.worker_online_s))
                )
                or 0
            )
        return {
            "status": "ok",
            "database": "ok",
            "database_latency_ms": round(ping_ms, 3),
            "workers_online": online,
            "jobs": jobs.count_by_status(),
            "auth": "keys" if keys.has_keys() else "setup",
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

    # -- files ---------------------------------------------------------------------------

    @api.post("/v1/files", tags=["files"])
    def upload_file(
        caller: CallerDep,
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
                data, filename=file.filename or "", purpose=purpose, owner=caller.account
            )
        except ConfigError as exc:
            return _error(400, str(exc), "invalid_request_error", "invalid_file", "file")
        return file_object(stored)

    @api.get("/v1/files", tags=["files"])
    def list_files(
        caller: CallerDep,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = MAX_LIST,
        order: Literal["asc", "desc"] = "desc",
    ) -> dict[str, Any]:
        """Your files (an operator's: everyone's), newest first (`order=asc`: oldest first),
        with cursor pagination."""
        found, has_more = files.list(
            owner=caller.owner_filter, purpose=purpose, after=after, limit=limit, order=order
        )
        return cursor_page([file_object(f) for f in found], has_more)

    @api.get("/v1/files/{file_id}", tags=["files"])
    def get_file(caller: CallerDep, file_id: str) -> dict[str, Any]:
        return file_object(files.get(file_id, owner=caller.owner_filter))

    @api.get("/v1/files/{file_id}/content", tags=["files"])
    def file_content(caller: CallerDep, file_id: str) -> Response:
        """The file's bytes, exactly as uploaded."""
        return Response(
            files.content(file_id, owner=caller.owner_filter),
            media_type="application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{file_id}.jsonl"'},
        )

    @api.delete("/v1/files/{file_id}", tags=["files"])
    def delete_file(caller: CallerDep, file_id: str) -> dict[str, Any]:
        """Delete a file; jobs already created from it keep their data."""
        deleted = files.delete(file_id, owner=caller.owner_filter)
        return {"id": deleted.id, "object": "file", "deleted": True}

    # -- jobs ----------------------------------------------------------------------------

    def create_job(caller: CallerDep, body: CreateJobRequest) -> dict[str, Any]:
        """Check the settings, the model and every line of the data, then validate and queue
        the job (it starts as `validating_files`). Swarm hyperparameters (LoRA, inner steps,
        codecs, ...) go in `hyperparameters` or at the top level of the body."""
        owner = body.owner or caller.account
        if owner != caller.account and not caller.is_operator:
            raise PermissionDeniedError(
                f"owner: a researcher's jobs are paid from their own account ({caller.account})"
            )
        spec = check_sources(job_spec(body), caller)
        if spec.priority > 0 and not caller.is_operator:
            raise PermissionDeniedError(
                "priority: a researcher's jobs take priority 0 or below; the queue orders "
                "them by their owner's credits"
            )
        return describe(jobs.create_job(spec, body.metadata, owner=owner, suffix=body.suffix))

    api.post("/v1/fine_tuning/jobs", tags=["jobs"])(create_job)
    api.post("/v1/swarm/jobs", tags=["swarm"], summary="Create Job (swarm settings)")(create_job)

    @api.get("/v1/fine_tuning/jobs", tags=["jobs"])
    def list_jobs(caller: CallerDep, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        """Your jobs (an operator's: everyone's), newest first, with cursor pagination."""
        page = jobs.list_jobs(owner=caller.owner_filter, after=after, limit=_limit(limit, 100))
        queue = {e.job_id: e for e in scheduler.queue()} if page.jobs else {}
        return {
            "object": "list",
            "data": [describe(j, queue) for j in page.jobs],
            "has_more": page.has_more,
        }

    @api.get("/v1/fine_tuning/jobs/{job_id}", tags=["jobs"])
    def get_job(caller: CallerDep, job_id: str) -> dict[str, Any]:
        return describe(own_job(job_id, caller))

    @api.post("/v1/fine_tuning/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(caller: CallerDep, job_id: str) -> dict[str, Any]:
        """Stop the job for good; accepted work is still paid for."""
        return describe(jobs.cancel(own_job(job_id, caller).id))

    @api.post("/v1/fine_tuning/jobs/{job_id}/pause", tags=["jobs"])
    def pause_job(caller: CallerDep, job_id: str) -> dict[str, Any]:
        """Stop handing out the job's tasks; running ones are revoked and run again later."""
        return describe(jobs.pause(own_job(job_id, caller).id))

    @api.post("/v1/fine_tuning/jobs/{job_id}/resume", tags=["jobs"])
    def resume_job(caller: CallerDep, job_id: str) -> dict[str, Any]:
        return describe(jobs.resume(own_job(job_id, caller).id))

    @api.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", tags=["jobs"])
    def list_checkpoints(
        caller: CallerDep, job_id: str, after: str | None = None, limit: int = 10
    ) -> dict[str, Any]:
        """Kept versions, newest first; `model` of a new job may name one to start from it."""
        rows, has_more = jobs.list_checkpoints(
            own_job(job_id, caller).id, after=after, limit=_limit(limit, 100)
        )
        return cursor_page([checkpoint_object(c) for c in rows], has_more)

    @api.get("/v1/fine_tuning/jobs/{job_id}/events", tags=["jobs"])
    def list_events(
        caller: CallerDep, job_id: str, after: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        """The job's events, newest first: `message` events, and a `metrics` event per round
        (`data`: step, total_steps, train_loss, valid_loss and the round's numbers)."""
        anchor: int | None = None
        if after is not None:
            number = after.removeprefix("ftevent-")
            if not (number.isascii() and number.isdigit() and len(number) <= 18):
                raise ConfigError(f"after must be an event id (ftevent-N), got {after!r:.60}")
            anchor = int(number)
        events, has_more = jobs.list_events(
            own_job(job_id, caller).id, after=anchor, limit=_limit(limit, 1000)
        )
        return {
            "object": "list",
            "has_more": has_more,
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

    # -- swarm extras --------------------------------------------------------------------

    @api.get("/v1/swarm/jobs/{job_id}/rounds", tags=["swarm"])
    def list_rounds(caller: CallerDep, job_id: str) -> dict[str, Any]:
        """Per-round numbers: losses, tokens, bytes up and down, clients."""
        rounds = jobs.list_rounds(own_job(job_id, caller).id)
        accepted = jobs.tasks_accepted(job_id)
        return {
            "object": "list",
            "data": [
                {**round_summary(r), "tasks_accepted": accepted.get(r.index, 0)} for r in rounds
            ],
        }

    @api.get("/v1/swarm/jobs/{job_id}/tasks", tags=["swarm"])
    def list_tasks(caller: CallerDep, job_id: str) -> dict[str, Any]:
        """Every task of a job: kind, state, the worker, its data span and inner steps."""
        return {
            "object": "list",
            "data": [
                task_object(t, spans) for t, spans in jobs.list_tasks(own_job(job_id, caller).id)
            ],
        }

    @api.get("/v1/swarm/queue", tags=["swarm"])
    def queue(caller: CallerDep) -> dict[str, Any]:
        """Queued jobs in the order they will start, with why each one waits (a researcher
        sees where their own jobs stand)."""
        entries = scheduler.queue()
        if not caller.is_operator:
            owners = jobs.owners([e.job_id for e in entries])
            entries = [e for e in entries if owners.get(e.job_id) == caller.account]
        return {
            "object": "list",
            "data": [
                {"job_id": e.job_id, "position": e.position, "reason": e.reason} for e in entries
            ],
        }

    @api.get("/v1/swarm/status", tags=["swarm"])
    def swarm_status() -> dict[str, Any]:
        """The swarm at a glance: workers online by device and their measured compute, tokens
        trained per second (over ten minutes, and per minute over the last hour), tasks by
        state (the queue depths), leases by outcome, recent round times, jobs by status, and
        results accepted, rejected and ignored since the coordinator started."""
        counters = services.servicer.counters()
        return {
            "object": "swarm.status",
            **swarm_numbers(services),
            "jobs": jobs.count_by_status(),
            "queue_length": len(scheduler.queue()),
            "database_latency_ms": round(db.ping_s() * 1000, 3),
            "draining": services.control.draining(),
            "results": {  # since this process started
                outcome: counters.get(f"results_{outcome}", 0)
                for outcome in ("accepted", "rejected", "ignored")
            },
        }

    @api.get("/v1/swarm/jobs/{job_id}/artifacts", tags=["swarm"])
    def list_artifacts(caller: CallerDep, job_id: str) -> dict[str, Any]:
        """The results of a succeeded job: `adapter` (PEFT) and `merged` (HF folder) files."""
        job = own_job(job_id, caller)
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

    @api.get("/v1/swarm/jobs/{job_id}/artifacts/{kind}/{path:path}", tags=["swarm"])
    def download_artifact(caller: CallerDep, job_id: str, kind: str, path: str) -> FileResponse:
        """One file of an artifact, e.g. `merged/model.safetensors`."""
        artifacts = own_job(job_id, caller).artifacts or {}
        files = (artifacts.get(kind) or {}).get("files", {})
        if path not in files:
            raise NotFoundError(f"job {job_id} has no artifact file {kind}/{path}")
        return FileResponse(
            blobs.path(files[path]),
            filename=path.rsplit("/", 1)[-1],
            media_type="application/octet-stream",
        )

    # -- credits -------------------------------------------------------------------------

    def visible_account(account: str | None, caller: Caller) -> str:
        """The account a credits request reads: the caller's own by default; a researcher
        may read their own and the pools, an operator any."""
        account = check_account(account or caller.account)
        if not caller.is_operator and account != caller.account and not account.startswith("pool:"):
            raise PermissionDeniedError(
                f"account: a researcher sees only their own account ({caller.account}) and pools"
            )
        return account

    @api.get("/v1/swarm/credits", tags=["credits"])
    def account_credits(
        caller: CallerDep,
        account: str | None = None,
        limit: int = 50,
        before: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    ) -> dict[str, Any]:
        """An account's granted and pending credits and its recent entries, newest first
        (default: your own account)."""
        account = visible_account(account, caller)
        limit = _limit(limit, 500)
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

    @api.get("/v1/swarm/credits/leaderboard", tags=["credits"])
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

    @api.get("/v1/swarm/ledger", tags=["credits"])
    def ledger_totals(_: OperatorDep) -> dict[str, Any]:
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

    @api.post("/v1/swarm/credits/issue", tags=["credits"])
    def issue_credits(caller: OperatorDep, body: CreditsRequest) -> dict[str, Any]:
        """Give an account credits (the operator's grant); they are minted."""
        with db.transaction() as session:
            ledger.issue(session, check_account(body.account), body.micro(), body.memo)
        return account_credits(caller, body.account, limit=1)

    @api.post("/v1/swarm/credits/donate", tags=["credits"])
    def donate_credits(caller: CallerDep, body: CreditsRequest) -> dict[str, Any]:
        """Move credits from your account (an operator: any) to the research pool."""
        account = check_account(body.account)
        if not caller.sees(account):
            raise PermissionDeniedError(
                f"account: a researcher donates only from their own account ({caller.account})"
            )
        with db.transaction() as session:
            ledger.donate(session, account, body.micro())
        return account_credits(caller, account, limit=1)

    # -- keys ----------------------------------------------------------------------------

    @api.post("/v1/swarm/keys", tags=["keys"])
    def create_key(_: OperatorDep, body: CreateKeyRequest) -> dict[str, Any]:
        """Make an API key; the answer is the only time its secret (`key`) is shown."""
        key, secret = keys.create(body.user, body.role, body.name)
        return key_object(key, secret)

    @api.get("/v1/swarm/keys", tags=["keys"])
    def list_keys(caller: CallerDep) -> dict[str, Any]:
        """Your keys (an operator's: everyone's), newest first, without their secrets."""
        return {"object": "list", "data": [key_object(k) for k in keys.list(caller.owner_filter)]}

    @api.delete("/v1/swarm/keys/{key_id}", tags=["keys"])
    def revoke_key(caller: CallerDep, key_id: str) -> dict[str, Any]:
        """Revoke a key (your own, or any for an operator); it stops working at once."""
        return key_object(keys.revoke(key_id, caller))

    @api.get("/v1/swarm/me", tags=["keys"])
    def whoami(caller: CallerDep) -> dict[str, Any]:
        """Who the API key belongs to."""
        return {
            "object": "swarm.caller",
            "user": caller.account,
            "role": caller.role,
            "key_id": caller.key_id,
        }

    # -- models and workers --------------------------------------------------------------

    def model_objects(caller: Caller) -> list[dict[str, Any]]:
        """The catalog as OpenAI `model` objects: base models, and the fine-tuned results and
        checkpoints (source `job:ID`) the caller may see, a result named as OpenAI does."""
        models = []
        for row in catalog.list():
            model = {
                "id": row["name"],
                "object": "model",
                "created": int(row.get("created_at") or started),
                "owned_by": "swarm",
                "swarm": row,
            }
            source = str(row.get("source") or "")
            if source.startswith("job:"):
                try:
                    job = jobs.get_job(source.removeprefix("job:"))
                except NotFoundError:  # a snapshot whose job this database does not have
                    if caller.is_operator:
                        models.append(model)
                    continue
                if not caller.sees(job.owner):
                    continue
                model["owned_by"] = job.owner
                if row["name"] == job.id:
                    model["id"] = fine_tuned_model(job) or job.id
                    model["swarm"] = {**row, "job_id": job.id, "base_model": job.model}
            models.append(model)
        return models

    @api.get("/v1/models", tags=["models"])
    def list_models(caller: CallerDep) -> dict[str, Any]:
        """Base models this coordinator can train, and your fine-tuned results."""
        return {"object": "list", "data": model_objects(caller)}

    @api.get("/v1/models/{model_id}", tags=["models"])
    def get_model(caller: CallerDep, model_id: str) -> dict[str, Any]:
        for model in model_objects(caller):
            if model["id"] == model_id:
                return model
        raise NotFoundError(f"no model {model_id!r:.120}; GET /v1/models lists them")

    @api.get("/v1/swarm/workers", tags=["swarm"])
    def list_workers() -> dict[str, Any]:
        """Registered workers with their hardware and counts; `trust` is the results accepted
        in a row since the worker's last rejected one."""
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
                    "trust": w.valid_streak,
                    "banned": w.banned_at is not None,
                    "ban_reason": w.ban_reason,
                }
                for w in workers
            ],
        }

    @api.get("/v1/swarm/coordinators", tags=["swarm"])
    def list_coordinators() -> dict[str, Any]:
        """The coordinator processes serving this database (several may share PostgreSQL),
        newest first; `alive`: seen within `coordinator_timeout_s`; `this`: the one answering."""
        return {"object": "list", "data": services.presence.coordinators()}

    @api.post("/v1/swarm/workers/{worker_id}/ban", tags=["swarm"])
    def ban_worker(_: OperatorDep, worker_id: str, body: ReasonRequest) -> dict[str, Any]:
        """Ban a worker: no more tasks, its results refused, its running tasks handed out
        again, and it no longer counts as online."""
        worker = services.control.ban(worker_id, body.reason)
        return {"id": worker.id, "banned": True, "ban_reason": worker.ban_reason}

    @api.post("/v1/swarm/workers/{worker_id}/unban", tags=["swarm"])
    def unban_worker(_: OperatorDep, worker_id: str) -> dict[str, Any]:
        worker = services.control.unban(worker_id)
        return {"id": worker.id, "banned": False, "ban_reason": None}

    @api.get("/v1/swarm/rejections", tags=["swarm"])
    def list_rejections(_: OperatorDep) -> dict[str, Any]:
        """The latest results the coordinator refused (bad bytes, bad signature, wrong shapes,
        a banned worker), newest first, since it started; at most 100."""
        return {"object": "list", "data": services.servicer.rejections()}

    @api.post("/v1/swarm/drain", tags=["swarm"])
    def drain(_: OperatorDep, body: ReasonRequest) -> dict[str, Any]:
        """Hand out no new tasks; running ones finish and count (before a restart or an
        upgrade). Jobs keep their state; `undrain` carries on."""
        return {"object": "swarm.drain", "draining": services.control.drain(body.reason)}

    @api.post("/v1/swarm/undrain", tags=["swarm"])
    def undrain(_: OperatorDep) -> dict[str, Any]:
        services.control.undrain()
        return {"object": "swarm.drain", "draining": None}

    app.include_router(api)
    mount_dashboard(app)
    instrument_http(app)
    app.include_router(metrics_router(services))
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
