"""The volunteer client's settings, read once from flags and `SWARM_*` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from swarm.client.account import default_config_dir
from swarm.client.availability import Schedule


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "swarmclient"


def parse_targets(coordinators: str) -> list[str]:
    """`HOST:PORT[,HOST:PORT...]` as a list, in order, without duplicates or blanks."""
    targets = list(dict.fromkeys(t.strip() for t in coordinators.split(",") if t.strip()))
    if not targets:
        raise ValueError("no coordinator given: expected HOST:PORT[,HOST:PORT...]")
    for target in targets:
        host, colon, port = target.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"coordinator {target!r} is not HOST:PORT (a port from 1 to 65535); separate "
                "several coordinators with commas"
            )
    return targets


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_", frozen=True)

    coordinator: str = Field(
        default="127.0.0.1:50051",
        description="HOST:PORT of a coordinator's gRPC endpoint; several that share one "
        "database, separated by commas, are tried in turn",
    )
    name: str = Field(default_factory=lambda: os.uname().nodename[:64])
    data_dir: Path = Field(default_factory=default_data_dir)
    config_dir: Path = Field(default_factory=default_config_dir)
    account_token: str = Field(
        default="", repr=False, description="overrides the token `swarmclient login` stored"
    )
    threads: int = Field(default=0, ge=0, le=1024, description="0: let PyTorch decide")
    rpc_timeout_s: float = Field(default=15.0, gt=0, le=600)
    max_backoff_s: float = Field(default=30.0, gt=0, le=3600)
    max_upload_mbps: float = Field(default=0.0, ge=0, le=1e6, description="0: no limit")
    max_download_mbps: float = Field(default=0.0, ge=0, le=1e6, description="0: no limit")
    cache_max_gb: float = Field(default=20.0, ge=0, le=1e6, description="0: no cap")
    max_memory_gb: float = Field(
        default=0.0, ge=0, le=1e6, description="memory offered to jobs (0: all of it)"
    )
    idle_only: bool = False
    idle_busy_share: float = Field(default=0.25, gt=0, le=1)
    schedule: str = Field(default="", description="a daily local-time window, e.g. 22:00-07:00")
    log_level: str = "INFO"
    insecure: bool = Field(
        default=False, description="talk to the coordinator in plaintext (one run with --no-tls)"
    )
    tls_ca: Path | None = Field(
        default=None, description="verify the coordinator's certificate against this CA bundle"
    )
    coordinator_fingerprint: str = Field(
        default="",
        description="trust only these certificate fingerprints (SHA256:..., comma-separated) "
        "instead of pinning the first one seen",
    )
    peer_averaging: bool = Field(
        default=True,
        description="average with the round's other workers when a job asks (needs hivemind)",
    )
    peer_listen: str = Field(
        default="/ip4/0.0.0.0/tcp/0",
        description="multiaddr the hivemind node listens on for peer averaging",
    )
    peer_announce: str = Field(
        default="", description="multiaddrs other workers dial (a forwarded port), comma-separated"
    )

    @field_validator("coordinator")
    @classmethod
    def _valid_coordinators(cls, value: str) -> str:
        return ",".join(parse_targets(value))

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        if value:
            Schedule.parse(value)
        return value
