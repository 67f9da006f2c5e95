"""The worker's error-feedback files: saved atomically, resumed, and never trusted blindly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from swarm.client.feedback import FeedbackStore
from swarm.compression import CompressionPolicy, ErrorFeedback, encode_payload


def _feedback_with_residual() -> ErrorFeedback:
    feedback = ErrorFeedback()
    update = {"w": torch.linspace(-1, 1, 64 * 64).view(64, 64)}
    encode_payload(update, CompressionPolicy(chain="topk:0.01"), feedback=feedback)
    feedback.commit()
    return feedback


def test_saved_residuals_are_resumed_by_a_new_store(tmp_path: Path) -> None:
    feedback = _feedback_with_residual()
    assert feedback.norm() > 0
    FeedbackStore(tmp_path).save("ftjob-abc", feedback)
    resumed = FeedbackStore(tmp_path).get("ftjob-abc")
    assert resumed.norm() == feedback.norm()
    torch.testing.assert_close(resumed.residual("w"), feedback.residual("w"))
    assert not list(tmp_path.glob("*.new"))  # the temporary file was renamed into place


def test_a_corrupt_file_starts_the_job_without_residuals(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    store.path("ftjob-abc").parent.mkdir(parents=True, exist_ok=True)
    store.path("ftjob-abc").write_bytes(b"\x00garbage")
    assert len(store.get("ftjob-abc")) == 0


def test_a_job_id_cannot_escape_the_feedback_folder(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback")
    for hostile in ("../../etc/passwd", ".hidden", "a/b", "x" * 500):
        path = store.path(hostile)
        assert path.parent == tmp_path / "feedback", hostile
    assert store.path("ftjob-abc").name == "ftjob-abc.safetensors"


def test_a_residual_that_overflows_is_dropped_and_the_update_still_goes_out(
    tmp_path: Path,
) -> None:
    from swarm.client.settings import ClientSettings
    from swarm.client.worker import Worker
    from swarm.compression import decode_payload
    from swarm.protocol import messages as m
    from tests.unit.client.train_tasks import train_task

    policy = m.CompressionPolicy(chain="topk:0.1+fp32", small_chain="fp32", small_elements=0)
    task = train_task(job_id="ftjob-abc", version=0, params_sha256="", policy=policy, seed=3)
    update = {"w": torch.full((4, 8), 3e38)}
    worker = Worker(ClientSettings(data_dir=tmp_path))
    _, _, _, feedback = worker._encode(task, update)
    feedback.commit()  # 90% of 3e38 per element is left behind
    path, _, size, feedback = worker._encode(task, update)  # plus 3e38 more: inf
    assert size == path.stat().st_size
    decoded = decode_payload(path.read_bytes(), {"w": (4, 8)}, CompressionPolicy(**policy.__dict__))
    assert decoded["w"].abs().max() == pytest.approx(3e38)
