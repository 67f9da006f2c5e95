"""The volunteer client's settings, read once from flags and `SWARM_*` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "swarmclient"


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_", frozen=True)

    coordinator: str = "127.0.0.1:50051"
    name: str = Field(default_factory=lambda: os.uname().nodename[:64])
    data_dir: Path = Field(default_factory=default_data_dir)
    threads: int = Field(default=0, ge=0, le=1024, description="0: let PyTorch decide")
    rpc_timeout_s: float = Field(default=15.0, gt=0, le=600)
    max_backoff_s: float = Field(default=30.0, gt=0, le=3600)
    max_upload_mbps: float = Field(default=0.0, ge=0, le=1e6, description="0: no limit")
    max_download_mbps: float = Field(default=0.0, ge=0, le=1e6, description="0: no limit")
    cache_max_gb: float = Field(default=20.0, ge=0, le=1e6, description="0: no cap")
    log_level: str = "INFO"
