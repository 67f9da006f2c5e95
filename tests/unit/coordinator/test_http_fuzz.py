"""Schemathesis against the coordinator's own OpenAPI document: generated requests, valid and
invalid, to every operation; none may get a 5xx, and every error is OpenAI-shaped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from swarm.coordinator.http import create_app
from tests.conftest import wire_services

EXAMPLES_PER_OPERATION = 30


def check_response(case: Any, headers: dict[str, str], statuses: list[int]) -> None:
    response = case.call(headers=headers)
    statuses.append(response.status_code)
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    if response.status_code >= 400:
        error = response.json().get("error")
        assert error is not None, (case.method, case.path, response.text[:500])
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["message"]


def test_no_generated_request_gets_a_server_error(tmp_path: Path) -> None:
    services = wire_services(tmp_path)
    _, secret = services.keys.create("fuzzer", "operator")
    headers = {"Authorization": f"Bearer {secret}"}
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(services))
        labels: list[str] = []
        statuses: list[int] = []
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result  # the document itself is valid
            operation = result.ok()
            labels.append(operation.label)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=EXAMPLES_PER_OPERATION,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                def run(case: Any) -> None:
                    check_response(case, headers, statuses)

                try:
                    run()
                except Unsatisfiable:  # nothing to make invalid: no parameters, no body
                    assert mode == GenerationMode.NEGATIVE, operation.label
        assert "POST /v1/fine_tuning/jobs" in labels and "POST /v1/files" in labels
        assert len(labels) >= 30, labels
        assert len(statuses) >= 10 * len(labels)  # the cases ran, and reached the routes:
        assert {200, 400, 404} <= set(statuses), sorted(set(statuses))
    finally:
        services.db.dispose()
