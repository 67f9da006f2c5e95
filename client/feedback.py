"""Error-feedback residuals on disk, one file per job, so they survive a restart."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from swarm.compression import ErrorFeedback
from swarm.protocol.errors import CompressionError

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}")


class FeedbackStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._loaded: dict[str, ErrorFeedback] = {}

    def path(self, job_id: str) -> Path:
        name = job_id if _SAFE_NAME.fullmatch(job_id) and job_id[0] != "." else None
        return self.root / f"{name or hashlib.sha256(job_id.encode()).hexdigest()}.safetensors"

    def get(self, job_id: str) -> ErrorFeedback:
        """The job's residuals: in memory, else from disk, else empty."""
        if job_id not in self._loaded:
            path = self.path(job_id)
            feedback = ErrorFeedback()
            if path.exists():
                try:
                    feedback = ErrorFeedback.from_bytes(path.read_bytes())
                    logger.info(
                        "job %s: resumed error feedback (%d residuals, norm %.4g)",
                        job_id,
                        len(feedback),
                        feedback.norm(),
                    )
                except CompressionError as exc:
                    logger.warning("job %s: %s; starting without residuals", job_id, exc)
            self._loaded = {job_id: feedback}  # one job at a time stays in memory
        return self._loaded[job_id]

    def save(self, job_id: str, feedback: ErrorFeedback) -> None:
        """Write the residuals atomically (a crash leaves the old file or the new one)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(job_id)
        partial = path.with_suffix(".new")
        partial.write_bytes(feedback.to_bytes())
        os.replace(partial, path)
