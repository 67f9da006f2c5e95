"""JSON log lines: ids are fields, from `extra` or from the message."""

from __future__ import annotations

import json
import logging

from swarm.coordinator.logs import JsonFormatter


def formatted(message: str, *args: object, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("swarm.test", logging.INFO, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(record, name, value)
    return json.loads(JsonFormatter().format(record))  # type: ignore[no-any-return]


def test_the_ids_a_message_names_become_fields() -> None:
    line = formatted(
        "job %s round %d: task %s accepted from %s",
        "ftjob-0a1b2c",
        3,
        "task-0a1b2c3d4e5f-3-1",
        "wk-00ff11ee",
    )
    assert line["message"] == (
        "job ftjob-0a1b2c round 3: task task-0a1b2c3d4e5f-3-1 accepted from wk-00ff11ee"
    )
    assert (line["job_id"], line["round"], line["task_id"], line["worker_id"]) == (
        "ftjob-0a1b2c",
        3,
        "task-0a1b2c3d4e5f-3-1",
        "wk-00ff11ee",
    )
    assert (line["level"], line["logger"]) == ("INFO", "swarm.test")
    assert str(line["time"]).endswith("+00:00")


def test_extra_fields_win_and_lines_about_nothing_carry_no_ids() -> None:
    line = formatted("job ftjob-aaaa queued", job_id="ftjob-bbbb")
    assert line["job_id"] == "ftjob-bbbb"
    plain = formatted("coordinator serving gRPC on 127.0.0.1:50051 (reopened 2 round(s))")
    assert not {"job_id", "round", "task_id", "worker_id"} & set(plain)
