"""The coordinator's settings, read once from flags and `SWARM_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from swarm.scheduler import LeasePolicy


class CoordinatorSettings(BaseSettings):
    """Every knob of one coordinator process; flags override environment variables."""

    model_config = SettingsConfigDict(env_prefix="SWARM_", frozen=True)

    host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    http_port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path("swarm-data")
    db: str | None = Field(default=None, description="database URL; SQLite in data_dir if unset")
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=600)
    lease_ttl_s: float = Field(default=30.0, gt=0, le=86_400)
    max_task_s: float = Field(default=3600.0, gt=0, le=86_400)
    solo_wait_s: float = Field(default=20.0, gt=0, le=86_400)
    worker_online_s: float = Field(
        default=30.0, gt=0, le=86_400, description="a worker seen this recently counts as online"
    )
    grpc_threads: int = Field(default=32, ge=2, le=1024)
    max_concurrent_rpcs: int = Field(
        default=256,
        ge=0,
        le=1_000_000,
        description="gRPC calls in progress (running or queued) beyond which new ones are "
        "refused at once, for the client to retry after a backoff (0: no limit)",
    )
    lease_long_poll_s: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="a lease with nothing to hand out waits this long for new work (0: answer "
        "at once); keep it under the clients' RPC deadline (15 s)",
    )
    worker_rpc_rate: float = Field(
        default=50.0,
        ge=0,
        le=1e6,
        description="calls a second one worker may make, sustained (per coordinator process); "
        "beyond it its calls are refused for it to retry (0: no limit)",
    )
    worker_rpc_burst: int = Field(default=200, ge=1, le=1_000_000)
    blob_dir: Path | None = Field(
        default=None,
        description="content-addressed blobs; data_dir/blobs if unset. Coordinators sharing "
        "one database must share this directory too",
    )
    coordinator_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a coordinator not seen this long is gone: another takes over its rounds",
    )
    research_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="share of each job's spending for research"
    )
    require_credits: bool = Field(
        default=False,
        description="start a job only if its owner's balance covers its estimated cost",
    )
    tls: bool = Field(
        default=True,
        description="serve gRPC over TLS, with --tls-cert/--tls-key or a self-signed certificate "
        "made on first run in data_dir/tls (workers pin its fingerprint)",
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate (chain) to serve")
    tls_key: Path | None = Field(default=None, description="PEM private key of --tls-cert")
    http_tls: bool = Field(
        default=False, description="serve the HTTP API over TLS too, with the same certificate"
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    def lease_policy(self) -> LeasePolicy:
        return LeasePolicy(
            ttl_s=self.lease_ttl_s, max_task_s=self.max_task_s, solo_wait_s=self.solo_wait_s
        )

    def blobs_dir(self) -> Path:
        return self.blob_dir if self.blob_dir is not None else self.data_dir / "blobs"

    def tls_files(self) -> tuple[Path, Path]:
        """The certificate and key to serve: the ones given, or the self-signed pair."""
        if self.tls_cert is not None and self.tls_key is not None:
            return self.tls_cert, self.tls_key
        return self.data_dir / "tls" / "coordinator.crt", self.data_dir / "tls" / "coordinator.key"

    def database_url(self) -> str:
        if self.db:
            return self.db
        return f"sqlite:///{(self.data_dir / 'swarm.db').resolve()}"
