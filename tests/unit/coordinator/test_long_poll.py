"""Leases held open: a worker waiting for work hears of it as it appears, not at its next poll."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from swarm.coordinator.servicer import WorkSignal
from swarm.coordinator.tasks import NO_TASKS
from swarm.coordinator.workers import WorkerRegistry
from swarm.protocol import messages as m
from tests.conftest import MICRO_SPEC, signed_registration, start_job, wire_services


def test_a_pulse_wakes_waiters_and_a_timeout_does_not_hang() -> None:
    signal = WorkSignal(max_waiters=2)
    since = signal.generation
    assert signal.wait(since, 0.05) is False
    threading.Timer(0.1, signal.pulse).start()
    began = time.monotonic()
    assert signal.wait(since, 5.0) is True
    assert time.monotonic() - began < 2.0
    assert signal.wait(since, 5.0) is True  # that generation has passed: no wait at all


def test_waiters_beyond_the_limit_are_answered_at_once() -> None:
    signal = WorkSignal(max_waiters=1)
    since = signal.generation
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(signal.wait, since, 5.0)
        time.sleep(0.1)  # the first holds the only slot
        began = time.monotonic()
        assert signal.wait(since, 5.0) is None
        assert time.monotonic() - began < 0.5
        signal.pulse()
        assert first.result(timeout=5) is True


def test_a_waiting_lease_gets_the_task_of_a_job_that_starts_meanwhile(tmp_path: Path) -> None:
    services = wire_services(tmp_path, lease_long_poll_s=10.0, solo_wait_s=1.0)
    try:
        worker, token = WorkerRegistry(services.db).register(
            signed_registration(name="waiting"), "ipv4:127.0.0.1:1"
        )
        session = m.Session(worker_id=worker.id, token=token)
        request = m.LeaseTaskRequest(session=session)
        with ThreadPoolExecutor(1) as pool:
            began = time.monotonic()
            waiting = pool.submit(services.servicer.lease_task, request)
            time.sleep(0.3)
            assert not waiting.done()  # held open: nothing to hand out yet
            start_job(services, MICRO_SPEC)
            services.housekeeper.tick()  # sees the new round and wakes the lease
            response = waiting.result(timeout=10)
        assert response.task is not None, response.reason
        assert time.monotonic() - began < 5.0
    finally:
        services.db.dispose()


def test_a_lease_that_waited_in_vain_says_to_come_back_soon(tmp_path: Path) -> None:
    services = wire_services(tmp_path, lease_long_poll_s=0.3)
    try:
        worker, token = WorkerRegistry(services.db).register(
            signed_registration(name="idle"), "ipv4:127.0.0.1:1"
        )
        began = time.monotonic()
        response = services.servicer.lease_task(
            m.LeaseTaskRequest(session=m.Session(worker_id=worker.id, token=token))
        )
        assert time.monotonic() - began >= 0.3
        assert response.task is None and response.reason == NO_TASKS
        assert response.retry_after_s <= 0.5
    finally:
        services.db.dispose()
