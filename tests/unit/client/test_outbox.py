"""The outbox: finished results survive a restart; unfinished or damaged ones do not linger."""

from __future__ import annotations

import json
from pathlib import Path

from swarm.client.outbox import FinishedResult, Outbox
from swarm.protocol import messages as m

METRICS = m.TaskMetrics(loss_first=2.0, loss_last=1.5, tokens=512, compute_s=1.25, steps=4)


def _finish(
    outbox: Outbox, task_id: str, data: bytes = b"update", group_task_ids: list[str] | None = None
) -> FinishedResult:
    path, digest, size = outbox.spool(task_id, iter([data[:3], data[3:]]))
    result = FinishedResult(
        task_id=task_id,
        job_id="ftjob-1",
        lease_deadline_unix_s=1e9,
        payload=path,
        payload_sha256=digest,
        payload_size=size,
        metrics=METRICS,
        group_task_ids=group_task_ids or [],
    )
    outbox.seal(result)
    return result


def test_a_sealed_result_is_found_again_by_a_new_outbox(tmp_path: Path) -> None:
    first = _finish(Outbox(tmp_path), "task-a")
    second = _finish(Outbox(tmp_path), "task-b", b"another update")
    assert Outbox(tmp_path).finished() == [first, second]
    assert first.payload.read_bytes() == b"update"


def test_removed_results_are_gone(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    _finish(outbox, "task-a")
    outbox.remove("task-a")
    assert outbox.finished() == []
    assert list(tmp_path.iterdir()) == []


def test_a_spool_without_its_note_was_never_finished_and_is_deleted(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    path, _, _ = outbox.spool("task-a", iter([b"half an upd"]))
    assert outbox.finished() == []
    assert not path.exists()


def test_damaged_notes_are_dropped_with_their_payload(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    truncated = _finish(outbox, "task-a")
    truncated.payload.write_bytes(b"upd")  # not the noted size
    garbled = _finish(outbox, "task-b")
    garbled.payload.with_suffix(".json").write_text("{not json")
    wrong = _finish(outbox, "task-c")
    note = wrong.payload.with_suffix(".json")
    note.write_text(json.dumps({**json.loads(note.read_text()), "metrics": {"bogus": 1}}))
    kept = _finish(outbox, "task-d")
    assert outbox.finished() == [kept]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [kept.payload.name, kept.payload.with_suffix(".json").name]
    )


def test_an_empty_outbox_directory_may_not_exist_yet(tmp_path: Path) -> None:
    assert Outbox(tmp_path / "missing").finished() == []


def test_a_peer_groups_result_keeps_its_group(tmp_path: Path) -> None:
    """A leader restarted after a crash sends the group's average again as the group's."""
    sealed = _finish(Outbox(tmp_path), "task-a", b"average", ["task-a", "task-b", "task-c"])
    (found,) = Outbox(tmp_path).finished()
    assert found.group_task_ids == ["task-a", "task-b", "task-c"]
    assert found == sealed
