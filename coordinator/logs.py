"""The coordinator's log lines: text for people, or one JSON object per line for collectors.

`--log-format json` writes `time`, `level`, `logger` and `message`, plus `job_id`, `round`,
`task_id` and `worker_id` whenever the line is about one. Those come from the record's
`extra` when a call passes them, and otherwise from the ids the message names (every id has
a distinct prefix: `ftjob-`, `task-`, `wk-`), so every existing line is searchable by them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any

FIELDS = ("job_id", "round", "task_id", "worker_id")
_PATTERNS = {
    "job_id": re.compile(r"\bftjob-[0-9a-f]+\b"),
    "task_id": re.compile(r"\btask-[0-9a-f]+-\d+-\d+\b"),
    "worker_id": re.compile(r"\bwk-[0-9a-f]+\b"),
    "round": re.compile(r"\bround (\d+)\b"),
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is None:
                found = _PATTERNS[field].search(message)
                if found is not None:
                    value = int(found.group(1)) if field == "round" else found.group(0)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Log to standard error as `text` or `json`."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
