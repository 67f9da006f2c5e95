"""The Dockerfile's images (no Docker engine runs here, so their shape is what is checked)."""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = (Path(__file__).parents[2] / "Dockerfile").read_text()


def _stages() -> dict[str, str]:
    parts = re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[1:]
    return {part.split()[2] if " AS " in part.split("\n")[0] else "": part for part in parts}


def test_the_default_image_is_the_coordinator() -> None:
    last = re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[-1]
    assert last.startswith("python:3.11-slim AS coordinator")
    assert '[coordinator]"' in last and '"swarm", "coordinator"' in last


def test_the_gpu_client_image_has_the_worker_and_nothing_of_the_coordinator() -> None:
    client = _stages()["client-gpu"]
    assert "[coordinator]" not in client
    assert 'ENTRYPOINT ["swarmclient", "join"' in client
    assert "USER swarm" in client and "SWARM_DATA_DIR=/data" in client
