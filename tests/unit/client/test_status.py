"""The worker's status board, its file, and the panel a volunteer sees."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console

from swarm.client.live import render
from swarm.client.status import STATUS_FILE, StatusBoard, WorkerStatus, is_running, read_status


def _text(status: WorkerStatus) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(render(status, now=status.started_at + 125))
    return console.export_text()


def test_the_file_follows_the_board(tmp_path: Path) -> None:
    board = StatusBoard(tmp_path / STATUS_FILE, name="laptop", coordinator="host:50051")
    board.update(state="training", task_id="task-1", job_id="ftjob-1", step=3, steps=40)
    status = read_status(tmp_path)
    assert status is not None
    assert (status.name, status.state, status.step, status.steps) == ("laptop", "training", 3, 40)
    assert status.pid == os.getpid() and is_running(status)


def test_a_stale_stopped_or_vanished_client_is_not_running(tmp_path: Path) -> None:
    now = time.time()
    assert not is_running(WorkerStatus(updated_at=now - 600), now=now)
    assert not is_running(WorkerStatus(state="stopped"), now=now)
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    assert not is_running(WorkerStatus(pid=child), now=now)


def test_no_or_damaged_status_file_reads_as_none(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    (tmp_path / STATUS_FILE).write_text("{half")
    assert read_status(tmp_path) is None
    # Fields a newer client added are ignored rather than breaking an older reader.
    (tmp_path / STATUS_FILE).write_text(json.dumps({"name": "x", "future_field": 1}))
    status = read_status(tmp_path)
    assert status is not None and status.name == "x"


def test_the_panel_says_what_a_volunteer_wants_to_know() -> None:
    status = WorkerStatus(
        name="laptop",
        worker_id="wk-1",
        device="CPU (8 cores)",
        coordinator="host:50051",
        state="training",
        task_id="task-7",
        job_id="ftjob-2",
        step=12,
        steps=40,
        loss=2.34567,
        tokens_per_s=10512.4,
        credits_granted=1.5,
        credits_pending=0.25,
        bytes_up=2_500_000,
        bytes_down=40_000,
        latency_ms=12.3,
        max_upload_mbps=5,
        tasks_done=3,
        started_at=1000.0,
    )
    text = _text(status)
    for expected in (
        "swarmclient · laptop (wk-1) · CPU (8 cores)",
        "training  task task-7 (job ftjob-2)",
        "12/40 steps",
        "loss 2.3457",
        "10,512 tokens/s",
        "1.5000 granted · 0.2500 pending",
        "↑ 2.5 MB  ↓ 40.0 kB  (caps ↑ 5 Mbit/s)",
        "host:50051  latency 12 ms",
        "3 done · 0 handed back · up 2m05s",
    ):
        assert expected in text, (expected, text)


def test_an_idle_worker_says_why() -> None:
    text = _text(WorkerStatus(state="idle", detail="this worker is banned by the operator: spam"))
    assert "idle  this worker is banned by the operator: spam" in text
    assert "steps" not in text and "measured after a task" in text
