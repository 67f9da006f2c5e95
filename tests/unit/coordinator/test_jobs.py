"""Creating jobs, running their rounds to the end, and reading them back (real SQLite)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from swarm.compression import apply_delta, encode_payload
from swarm.coordinator.aggregation import nesterov_step
from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.jobs import JobService
from swarm.coordinator.rounds import RoundService
from swarm.coordinator.scheduling import Scheduler
from swarm.coordinator.server import Services
from swarm.coordinator.storage import Database, Job, Round, Task
from swarm.coordinator.tasks import TaskService
from swarm.coordinator.workers import WorkerRegistry
from swarm.models import state_from_bytes, state_to_bytes
from swarm.protocol import messages as m
from swarm.protocol.errors import ConfigError, NotFoundError
from swarm.scheduler import JobSpec
from tests.conftest import MICRO_SPEC, signed_registration, start_job, wire_services

SPEC = MICRO_SPEC


@dataclass
class Coordinator:
    db: Database
    blobs: BlobStore
    rounds: RoundService
    jobs: JobService
    tasks: TaskService
    workers: WorkerRegistry
    catalog: ModelCatalog
    scheduler: Scheduler
    services: Services

    def start(self, spec: JobSpec) -> Job:
        """Create, prepare and start a job."""
        return start_job(self.services, spec)

    def register(self) -> str:
        request = signed_registration(name="volunteer")
        return self.workers.register(request, "ipv4:127.0.0.1:1")[0].id

    def rounds_of(self, job_id: str) -> list[Round]:
        return self.jobs.list_rounds(job_id)

    def tasks_of(self, round_id: int) -> list[Task]:
        with self.db.transaction() as session:
            return list(
                session.scalars(select(Task).where(Task.round_id == round_id).order_by(Task.index))
            )

    def train(
        self, job: Job, worker_id: str, gradient: dict[str, torch.Tensor], tokens: int
    ) -> m.SubmitResultResponse:
        """Lease a task as `worker_id` and submit `gradient` as its pseudo-gradient."""
        response = self.tasks.lease(worker_id, now=time.time() + 3600)
        assert response.task is not None, response.reason
        payload = encode_payload(gradient, SPEC.update_policy())
        sha = self.blobs.put_bytes(payload)
        header = m.ResultHeader(
            session=m.Session(worker_id=worker_id, token=b""),
            task_id=response.task.task_id,
            metrics=m.TaskMetrics(
                loss_first=5.6, loss_last=5.0, loss_mean=5.25, tokens=tokens, steps=2
            ),
            payload_sha256=sha,
            payload_size=len(payload),
        )
        self.tasks.check_submission(worker_id, header)
        return self.tasks.accept_result(worker_id, header, sha)

    def evaluate(self, worker_id: str, eval_loss: float) -> m.SubmitResultResponse:
        """Lease an evaluate task as `worker_id` and report `eval_loss` as its metrics."""
        response = self.tasks.lease(worker_id, now=time.time() + 3600)
        assert response.task is not None, response.reason
        assert response.task.evaluate is not None and response.task.train is None
        assert response.task.max_result_bytes == 0
        empty = self.blobs.put_bytes(b"")
        assert empty == hashlib.sha256(b"").hexdigest()
        header = m.ResultHeader(
            session=m.Session(worker_id=worker_id, token=b""),
            task_id=response.task.task_id,
            metrics=m.TaskMetrics(eval_loss=eval_loss, examples=8, compute_s=0.1, steps=0),
            payload_sha256=empty,
            payload_size=0,
        )
        assert self.tasks.check_submission(worker_id, header).kind == "evaluate"
        return self.tasks.accept_result(worker_id, header, empty)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    services = wire_services(tmp_path, lease_ttl_s=5.0, max_task_s=60.0, solo_wait_s=1.0)
    try:
        yield Coordinator(
            db=services.db,
            blobs=services.blobs,
            rounds=services.rounds,
            jobs=services.jobs,
            tasks=services.tasks,
            workers=WorkerRegistry(services.db),
            catalog=services.catalog,
            scheduler=services.scheduler,
            services=services,
        )
    finally:
        services.db.dispose()


def gradient_like(job: Job, value: float) -> dict[str, torch.Tensor]:
    # Multiples of 1/64 survive the fp16 codec exactly.
    return {n: torch.full(tuple(s), value) for n, s in job.param_shapes.items()}


def test_a_job_is_validated_then_prepared_then_queued_then_started(
    coordinator: Coordinator,
) -> None:
    created = coordinator.jobs.create_job(SPEC, metadata={"team": "x"})
    assert created.id.startswith("ftjob-")
    assert created.status == "validating_files"
    assert created.shard_sha256s == [] and coordinator.rounds_of(created.id) == []

    assert coordinator.jobs.prepare_next() == created.id
    assert coordinator.jobs.prepare_next() is None  # nothing else is waiting
    queued = coordinator.jobs.get_job(created.id)
    assert queued.status == "queued" and queued.queued_at is not None
    assert queued.estimated_credits > 0
    assert queued.shard_samples is not None and len(queued.shard_samples) == SPEC.num_shards
    assert queued.num_model_params >= queued.num_trainable_params > 0
    assert queued.memory_bytes > 4 * queued.num_model_params
    assert coordinator.rounds_of(created.id) == []

    assert coordinator.scheduler.admit_jobs() == [created.id]
    job = coordinator.jobs.get_job(created.id)
    assert job.status == "running"
    assert job.started_at is not None
    assert job.metadata_ == {"team": "x"}
    assert job.num_trainable_params == sum(torch.Size(s).numel() for s in job.param_shapes.values())
    assert len(job.shard_sha256s) == SPEC.num_shards
    assert all(coordinator.blobs.exists(sha) for sha in job.shard_sha256s)
    assert coordinator.blobs.exists(job.model_config_sha256)
    assert coordinator.blobs.exists(job.heldout_sha256)
    # Workers measure the initial model: the coordinator knows its loss once round 0 closes.
    assert job.initial_eval_loss is None

    [round_0] = coordinator.rounds_of(job.id)
    assert (round_0.index, round_0.status) == (0, "open")
    # One train task per client, then one task evaluating version 0.
    assert (round_0.num_train_tasks, round_0.num_tasks) == (SPEC.min_clients, SPEC.min_clients + 1)
    assert coordinator.blobs.exists(round_0.params_sha256)
    assert round_0.momentum_sha256 is None
    tasks = coordinator.tasks_of(round_0.id)
    assert [t.kind for t in tasks] == ["train"] * SPEC.min_clients + ["evaluate"]
    assert [t.status for t in tasks] == ["pending"] * (SPEC.min_clients + 1)
    assert [t.shard_index for t in tasks[:-1]] == [0, 1]
    assert len({t.seed for t in tasks}) == len(tasks)
    # Only train tasks consume shards.
    assert coordinator.jobs.get_job(job.id).tasks_created == SPEC.min_clients

    events = [e.message for e in coordinator.jobs.list_events(job.id)[0]]
    assert any("validated" in e and "queued" in e for e in events), events
    assert any(e.startswith("started") for e in events), events
    assert coordinator.jobs.count_by_status() == {"running": 1}


def test_round_zero_has_one_task_per_online_worker(coordinator: Coordinator) -> None:
    for _ in range(3):
        coordinator.register()
    job = coordinator.start(SPEC)
    [round_0] = coordinator.rounds_of(job.id)
    assert (round_0.num_train_tasks, round_0.num_tasks) == (3, 4)
    assert [t.kind for t in coordinator.tasks_of(round_0.id)] == ["train"] * 3 + ["evaluate"]


def test_a_job_runs_its_rounds_to_success(coordinator: Coordinator) -> None:
    job = coordinator.start(SPEC)
    w1, w2 = coordinator.register(), coordinator.register()
    [round_0] = coordinator.rounds_of(job.id)
    params_0 = state_from_bytes(coordinator.blobs.read(round_0.params_sha256))

    g1, g2 = gradient_like(job, 0.25), gradient_like(job, -0.5)
    assert coordinator.train(job, w1, g1, tokens=64).accepted
    assert coordinator.rounds.rounds_ready() == []  # one task still missing
    assert coordinator.train(job, w2, g2, tokens=64).accepted
    assert coordinator.rounds.rounds_ready() == []  # version 0 is not measured yet
    assert coordinator.evaluate(w1, eval_loss=5.5).accepted
    assert coordinator.rounds.rounds_ready() == [round_0.id]

    assert coordinator.rounds.close_round(round_0.id)
    assert not coordinator.rounds.close_round(round_0.id)  # someone already stepped it
    assert coordinator.rounds.rounds_ready() == []

    round_0, round_1 = coordinator.rounds_of(job.id)
    assert round_0.status == "closed"
    assert round_0.tokens == 128
    assert round_0.num_clients == 2
    assert round_0.train_loss == pytest.approx(5.25)
    assert round_0.eval_loss == pytest.approx(5.5)  # the evaluation of version 0
    assert round_0.eval_metrics == {"loss": 5.5, "examples": 8.0}
    assert round_0.closed_at is not None
    # Round 1 starts from the published outer step of the averaged pseudo-gradients.
    assert (round_1.index, round_1.status, round_1.num_train_tasks) == (1, "open", 2)
    assert round_1.num_tasks == 3
    expected, expected_momentum = nesterov_step(
        params_0, {n: (g1[n] + g2[n]) / 2 for n in g1}, None, lr=0.7, momentum=0.9
    )
    published = state_from_bytes(coordinator.blobs.read(round_1.params_sha256))
    assert round_1.momentum_sha256 is not None
    momentum = state_from_bytes(coordinator.blobs.read(round_1.momentum_sha256))
    for name in params_0:
        torch.testing.assert_close(published[name], expected[name])
        torch.testing.assert_close(momentum[name], expected_momentum[name])
    # Shards are used in order across rounds; evaluations use none.
    tasks_1 = coordinator.tasks_of(round_1.id)
    assert [t.shard_index for t in tasks_1 if t.kind == "train"] == [2, 3]
    assert [t.kind for t in tasks_1] == ["train", "train", "evaluate"]

    job_after_0 = coordinator.jobs.get_job(job.id)
    assert job_after_0.status == "running"
    assert job_after_0.rounds_completed == 1
    assert job_after_0.trained_tokens == 128
    assert job_after_0.initial_eval_loss == pytest.approx(5.5)
    assert job_after_0.initial_eval_metrics == round_0.eval_metrics
    assert job_after_0.eval_loss == pytest.approx(5.5)

    # Round 1 leases hand out the new version.
    assert coordinator.train(job, w1, gradient_like(job, 0.125), tokens=64).accepted
    assert coordinator.train(job, w2, gradient_like(job, 0.125), tokens=64).accepted
    assert coordinator.evaluate(w2, eval_loss=5.0).accepted
    assert coordinator.rounds.rounds_ready() == [round_1.id]
    assert coordinator.rounds.close_round(round_1.id)

    # After the last training round, a final round only measures the final version.
    *_, round_1, final = coordinator.rounds_of(job.id)
    assert round_1.eval_loss == pytest.approx(5.0)
    assert (final.index, final.status) == (SPEC.num_rounds, "open")
    assert (final.num_train_tasks, final.num_tasks) == (0, 1)
    assert [t.kind for t in coordinator.tasks_of(final.id)] == ["evaluate"]
    assert final.momentum_sha256 is not None and final.delta_sha256 is not None
    waiting = coordinator.jobs.get_job(job.id)
    assert waiting.status == "running"  # not done until the final version is measured
    assert waiting.rounds_completed == SPEC.num_rounds
    assert waiting.trained_tokens == 256
    assert waiting.finished_at is None
    assert waiting.result_params_sha256 is None
    assert coordinator.rounds.rounds_ready() == []

    assert coordinator.evaluate(w1, eval_loss=4.5).accepted
    assert coordinator.rounds.rounds_ready() == [final.id]
    assert coordinator.rounds.close_round(final.id)

    done = coordinator.jobs.get_job(job.id)
    assert done.status == "succeeded"
    assert done.rounds_completed == SPEC.num_rounds
    assert done.trained_tokens == 256
    assert done.initial_eval_loss == pytest.approx(5.5)
    assert done.eval_loss == pytest.approx(4.5)
    assert done.eval_metrics == {"loss": 4.5, "examples": 8.0}
    assert done.finished_at is not None
    assert done.result_params_sha256 == final.worker_params_sha256
    assert coordinator.blobs.exists(done.result_params_sha256)
    # A full fine-tune has no adapter; its merged model joins the catalog under the job's id.
    assert done.artifacts is not None
    assert set(done.artifacts) == {"merged"}
    assert done.artifacts["merged"]["model"] == job.id
    assert all(coordinator.blobs.exists(sha) for sha in done.artifacts["merged"]["files"].values())
    assert coordinator.catalog.manifest(job.id) is not None

    *_, final = coordinator.rounds_of(job.id)
    assert final.status == "closed"
    assert final.tokens == 0 and final.train_loss is None and final.num_clients == 0
    assert len(coordinator.rounds_of(job.id)) == SPEC.num_rounds + 1  # nothing after the final
    assert coordinator.rounds.rounds_ready() == []
    assert coordinator.tasks.lease(w1).task is None
    messages = [e.message for e in coordinator.jobs.list_events(job.id)[0]]
    assert any("succeeded" in message for message in messages)
    assert any("final version" in message for message in messages)


def test_the_final_round_packages_the_measured_version(coordinator: Coordinator) -> None:
    job = coordinator.start(replace(SPEC, num_rounds=1))
    w1, w2 = coordinator.register(), coordinator.register()
    coordinator.train(job, w1, gradient_like(job, 0.25), tokens=64)
    coordinator.train(job, w2, gradient_like(job, 0.25), tokens=64)
    coordinator.evaluate(w1, eval_loss=5.5)
    [round_0] = coordinator.rounds.rounds_ready()
    coordinator.rounds.close_round(round_0)
    _, final = coordinator.rounds_of(job.id)
    coordinator.evaluate(w2, eval_loss=5.25)
    coordinator.rounds.close_round(final.id)

    done = coordinator.jobs.get_job(job.id)
    assert done.status == "succeeded"
    # The merged model in the catalog holds exactly the weights the final evaluation measured:
    # the workers' copy of the final version.
    merged = coordinator.catalog.resolve(job.id, seed=0, chat=False).model.state_dict()
    final_params = state_from_bytes(coordinator.blobs.read(final.worker_params_sha256))
    assert final_params
    for name, tensor in final_params.items():
        torch.testing.assert_close(merged[name], tensor)


def test_leased_task_names_the_current_version(coordinator: Coordinator) -> None:
    job = coordinator.start(SPEC)
    w1, w2 = coordinator.register(), coordinator.register()
    for worker in (w1, w2):
        coordinator.train(job, worker, gradient_like(job, 0.25), tokens=64)
    coordinator.evaluate(w1, eval_loss=5.5)
    [round_id] = coordinator.rounds.rounds_ready()
    coordinator.rounds.close_round(round_id)
    round_1 = coordinator.rounds_of(job.id)[1]
    task = coordinator.tasks.lease(w1).task
    assert task is not None
    assert (task.round, task.version) == (1, 1)
    assert task.train is not None
    assert task.train.params_sha256 == round_1.worker_params_sha256
    # Round 1's evaluation measures the version round 1 starts from.
    coordinator.tasks.lease(w2)
    evaluation = coordinator.tasks.lease(coordinator.register()).task
    assert evaluation is not None and evaluation.evaluate is not None
    assert (evaluation.round, evaluation.version) == (1, 1)
    # Evaluations measure the workers' copy of the version, from which the result is built.
    assert evaluation.evaluate.params_sha256 == round_1.worker_params_sha256
    assert evaluation.evaluate.data_sha256 == job.heldout_sha256
    assert evaluation.evaluate.model_config_sha256 == job.model_config_sha256
    assert [d.version for d in evaluation.evaluate.param_deltas] == [1]


def test_a_round_whose_outer_step_fails_is_not_stranded(coordinator: Coordinator) -> None:
    job = coordinator.start(SPEC)
    w1, w2 = coordinator.register(), coordinator.register()
    for worker in (w1, w2):
        assert coordinator.train(job, worker, gradient_like(job, 0.25), tokens=64).accepted
    assert coordinator.evaluate(w1, eval_loss=5.5).accepted
    [round_id] = coordinator.rounds.rounds_ready()
    broken = coordinator.tasks_of(round_id)[0].result_sha256
    assert broken is not None
    coordinator.blobs.path(broken).write_bytes(b"not a payload")

    assert coordinator.rounds.close_round(round_id)
    [round_0] = coordinator.rounds_of(job.id)
    job_failed = coordinator.jobs.get_job(job.id).status == "failed"
    assert job_failed or (round_0.status == "open" and coordinator.rounds.rounds_ready())


def test_a_final_round_whose_packaging_fails_fails_the_job(coordinator: Coordinator) -> None:
    job = coordinator.start(replace(SPEC, num_rounds=1))
    w1, w2 = coordinator.register(), coordinator.register()
    coordinator.train(job, w1, gradient_like(job, 0.25), tokens=64)
    coordinator.train(job, w2, gradient_like(job, 0.25), tokens=64)
    coordinator.evaluate(w1, eval_loss=5.5)
    [round_0] = coordinator.rounds.rounds_ready()
    coordinator.rounds.close_round(round_0)
    _, final = coordinator.rounds_of(job.id)
    coordinator.evaluate(w2, eval_loss=5.25)
    coordinator.blobs.path(final.worker_params_sha256).write_bytes(b"not parameters")

    assert coordinator.rounds.close_round(final.id)
    failed = coordinator.jobs.get_job(job.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error["code"] == "platform_error"
    assert failed.artifacts is None
    assert coordinator.rounds_of(job.id)[-1].status == "closed"
    assert coordinator.rounds.rounds_ready() == []


def test_a_round_opened_before_evaluate_tasks_still_closes(coordinator: Coordinator) -> None:
    job = coordinator.start(SPEC)
    w1, w2 = coordinator.register(), coordinator.register()
    [round_0] = coordinator.rounds_of(job.id)
    # What migration 0003 leaves of a round opened by the previous release: train tasks only.
    with coordinator.db.transaction() as session:
        for task in session.scalars(select(Task).where(Task.round_id == round_0.id)):
            if task.kind == "evaluate":
                session.delete(task)
        old = session.get_one(Round, round_0.id)
        old.num_tasks, old.num_train_tasks = SPEC.min_clients, None
    for worker in (w1, w2):
        assert coordinator.train(job, worker, gradient_like(job, 0.25), tokens=64).accepted
    assert coordinator.rounds.rounds_ready() == [round_0.id]

    assert coordinator.rounds.close_round(round_0.id)
    round_0, round_1 = coordinator.rounds_of(job.id)
    assert round_0.status == "closed"
    assert round_0.eval_loss is None  # nobody measured version 0
    # The job goes on, and the rounds it opens from now on carry an evaluation.
    assert coordinator.jobs.get_job(job.id).status == "running"
    assert (round_1.status, round_1.num_train_tasks, round_1.num_tasks) == ("open", 2, 3)


def test_create_job_rejects_an_unknown_codec(coordinator: Coordinator) -> None:
    with pytest.raises(ConfigError, match="codec"):
        coordinator.jobs.create_job(replace(SPEC, codec="no-such-codec"))
    assert coordinator.jobs.list_jobs().jobs == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"dataset": "builtin:no-such-text"}, "dataset"),
        ({"num_shards": 100_000}, "num_shards"),
    ],
)
def test_create_job_rejects_bad_input_and_queues_nothing(
    coordinator: Coordinator, changes: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        coordinator.jobs.create_job(replace(SPEC, **changes))
    assert coordinator.jobs.list_jobs().jobs == []
    assert coordinator.jobs.count_by_status() == {}


def test_get_job_of_unknown_id_is_not_found(coordinator: Coordinator) -> None:
    with pytest.raises(NotFoundError):
        coordinator.jobs.get_job("ftjob-unknown")
    with pytest.raises(NotFoundError):
        coordinator.jobs.list_rounds("ftjob-unknown")
    with pytest.raises(NotFoundError):
        coordinator.jobs.list_events("ftjob-unknown")


def test_list_jobs_pages_newest_first(coordinator: Coordinator) -> None:
    created = [coordinator.jobs.create_job(replace(SPEC, seed=i)).id for i in range(5)]
    newest_first = created[::-1]

    first = coordinator.jobs.list_jobs(limit=2)
    assert [j.id for j in first.jobs] == newest_first[:2]
    assert first.has_more
    second = coordinator.jobs.list_jobs(after=first.jobs[-1].id, limit=2)
    assert [j.id for j in second.jobs] == newest_first[2:4]
    assert second.has_more
    last = coordinator.jobs.list_jobs(after=second.jobs[-1].id, limit=2)
    assert [j.id for j in last.jobs] == newest_first[4:]
    assert not last.has_more
    exact = coordinator.jobs.list_jobs(limit=5)
    assert [j.id for j in exact.jobs] == newest_first
    assert not exact.has_more
    assert coordinator.jobs.list_jobs(after=newest_first[-1]).jobs == []


def test_list_jobs_pages_jobs_created_in_the_same_instant(coordinator: Coordinator) -> None:
    ids = [coordinator.jobs.create_job(replace(SPEC, seed=i)).id for i in range(3)]
    with coordinator.db.transaction() as session:
        for job_id in ids:
            session.get_one(Job, job_id).created_at = 1000.0
    seen: list[str] = []
    after = None
    while True:
        page = coordinator.jobs.list_jobs(after=after, limit=1)
        seen += [j.id for j in page.jobs]
        if not page.has_more:
            break
        after = page.jobs[-1].id
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 3


def test_list_jobs_after_an_unknown_id_is_not_found(coordinator: Coordinator) -> None:
    with pytest.raises(NotFoundError):
        coordinator.jobs.list_jobs(after="ftjob-unknown")


def test_the_next_version_is_broadcast_as_a_delta_workers_can_apply(
    coordinator: Coordinator,
) -> None:
    job = coordinator.start(SPEC)
    w1, w2 = coordinator.register(), coordinator.register()
    [round_0] = coordinator.rounds_of(job.id)
    assert round_0.worker_params_sha256 == round_0.params_sha256  # version 0 is sent whole
    for worker in (w1, w2):
        coordinator.train(job, worker, gradient_like(job, 0.25), tokens=64)
    coordinator.evaluate(w2, eval_loss=5.5)
    [round_id] = coordinator.rounds.rounds_ready()
    coordinator.rounds.close_round(round_id)
    round_1 = coordinator.rounds_of(job.id)[1]
    assert round_1.delta_sha256 is not None and round_1.worker_params_sha256 is not None
    assert round_1.delta_bytes == coordinator.blobs.size(round_1.delta_sha256)

    # A worker holding version 0 rebuilds version 1 bit for bit from the delta alone.
    held = state_from_bytes(coordinator.blobs.read(round_0.params_sha256))
    rebuilt = apply_delta(
        held, coordinator.blobs.read(round_1.delta_sha256), SPEC.broadcast_policy()
    )
    assert state_to_bytes(rebuilt) == coordinator.blobs.read(round_1.worker_params_sha256)
    # ... which is the coordinator's version 1 up to the int8 broadcast's error.
    exact = state_from_bytes(coordinator.blobs.read(round_1.params_sha256))
    for name in exact:
        change = (exact[name] - held[name]).abs().max()
        assert (rebuilt[name] - exact[name]).abs().max() <= change / 127 + 1e-7
    assert round_1.delta_bytes < 0.8 * len(state_to_bytes(exact))  # micro-llama: many small tensors

    task = coordinator.tasks.lease(w1).task
    assert task is not None and task.train is not None
    assert task.train.params_sha256 == round_1.worker_params_sha256
    assert [d.version for d in task.train.param_deltas] == [1]
    assert task.train.param_deltas[0].delta_sha256 == round_1.delta_sha256
    assert task.train.param_deltas[0].params_sha256 == round_1.worker_params_sha256
