"""A finished LoRA job's results: the PEFT adapter, the merged model, and their HTTP routes.

A tiny SFT job is driven to success in-process: an in-test worker leases each task from the
TaskService, trains or evaluates exactly as `swarm.client.worker` does, and submits the result
(a compressed pseudo-gradient, or metrics with an empty payload).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm.compression import CompressionPolicy, encode_payload
from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.http import create_app
from swarm.coordinator.jobs import JobService
from swarm.coordinator.server import Services
from swarm.coordinator.storage import Database, Job
from swarm.coordinator.tasks import TaskService
from swarm.coordinator.workers import WorkerRegistry
from swarm.models import (
    AdapterConfig,
    InnerLoopConfig,
    apply_adapter,
    build_model,
    config_from_bytes,
    load_trainable_state,
    run_inner_loop,
    state_from_bytes,
)
from swarm.models.chat import generate_reply, render_ids
from swarm.models.objectives import build_objective
from swarm.models.sources import load_preset, load_weights
from swarm.protocol import messages as m
from swarm.scheduler import JobSpec
from tests.conftest import local_client, signed_registration, start_job, wire_services

SPEC = JobSpec(
    model="micro-llama",
    method="sft",
    num_rounds=1,
    inner_steps=3,
    warmup_steps=1,
    batch_size=4,
    seq_len=200,
    inner_lr=1e-2,
    min_clients=1,
    num_shards=2,
    codec="fp16",
    eval_batch_size=8,
    eval_examples=16,
)
INPUT_IDS = torch.tensor([[1, 60, 61, 62, 200, 7, 258, 40]])
QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


@dataclass
class Finished:
    """A job driven to success, and the services that ran it."""

    db: Database
    blobs: BlobStore
    catalog: ModelCatalog
    jobs: JobService
    services: Services
    job: Job
    reported: list[dict[str, float]]
    """The metrics the worker reported for each evaluation, by round."""


class InTestWorker:
    """Leases tasks and runs them the way `swarm.client.worker.Worker` does, in-process."""

    def __init__(self, blobs: BlobStore, tasks: TaskService, workers: WorkerRegistry) -> None:
        request = signed_registration(name="in-test")
        self.id = workers.register(request, "ipv4:127.0.0.1:1")[0].id
        self.blobs = blobs
        self.tasks = tasks
        self.evaluations: list[dict[str, float]] = []

    def run_one(self) -> str:
        """Lease one task, run it, submit its result; returns the task's kind."""
        response = self.tasks.lease(self.id)
        assert response.task is not None, response.reason
        task = response.task
        spec = task.train or task.evaluate
        assert spec is not None
        model = self._model(spec)
        if task.evaluate is not None:
            objective = build_objective(
                "sft", self.blobs.read(task.evaluate.data_sha256), vocab_size=259, seq_len=200
            )
            values = objective.evaluate(model, task.evaluate.batch_size, task.evaluate.max_examples)
            self.evaluations.append(values)
            metrics = m.TaskMetrics(
                eval_loss=values["loss"],
                token_accuracy=values["token_accuracy"],
                examples=int(values["examples"]),
            )
            self._submit(task, b"", metrics)
            return "evaluate"
        assert task.train is not None
        objective = build_objective(
            "sft", self.blobs.read(task.train.tokens_sha256), vocab_size=259, seq_len=200
        )
        result = run_inner_loop(
            model,
            objective,
            InnerLoopConfig(
                steps=task.train.inner_steps,
                batch_size=task.train.batch_size,
                learning_rate=task.train.learning_rate,
                weight_decay=task.train.weight_decay,
                max_grad_norm=task.train.max_grad_norm,
                warmup_steps=task.train.warmup_steps,
                seed=task.train.seed,
            ),
            samples=task.train.sample_indices,
        )
        policy = CompressionPolicy(**asdict(task.train.update_policy))
        payload = encode_payload(result.pseudo_gradient, policy, seed=task.train.seed)
        metrics = m.TaskMetrics(
            loss_first=result.losses[0],
            loss_last=result.losses[-1],
            loss_mean=sum(result.losses) / len(result.losses),
            tokens=result.tokens,
            compute_s=result.compute_s,
            steps=len(result.losses),
        )
        self._submit(task, payload, metrics)
        return "train"

    def _model(self, spec: m.TrainTask | m.EvaluateTask) -> torch.nn.Module:
        model = build_model(config_from_bytes(self.blobs.read(spec.model_config_sha256)))
        load_weights(model, [self.blobs.path(sha) for sha in spec.base_sha256s])
        adapter = spec.recipe.adapter
        model = apply_adapter(
            model,
            AdapterConfig(
                kind=adapter.kind,
                rank=adapter.rank,
                alpha=adapter.alpha,
                dropout=adapter.dropout,
                target_modules=tuple(adapter.target_modules),
            ),
        )
        load_trainable_state(model, state_from_bytes(self.blobs.read(spec.params_sha256)))
        return model

    def _submit(self, task: m.Task, payload: bytes, metrics: m.TaskMetrics) -> None:
        sha = self.blobs.put_bytes(payload)
        header = m.ResultHeader(
            session=m.Session(worker_id=self.id, token=b""),
            task_id=task.task_id,
            metrics=metrics,
            payload_sha256=sha,
            payload_size=len(payload),
        )
        self.tasks.check_submission(self.id, header)
        assert self.tasks.accept_result(self.id, header, sha).accepted


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    root = tmp_path_factory.mktemp("artifacts")
    services = wire_services(root, lease_ttl_s=60.0, max_task_s=600.0, solo_wait_s=1.0)
    db, blobs, catalog, rounds, jobs = (
        services.db,
        services.blobs,
        services.catalog,
        services.rounds,
        services.jobs,
    )
    worker = InTestWorker(blobs, services.tasks, WorkerRegistry(db))
    try:
        job = start_job(services, SPEC)
        # Round 0: one train task and the evaluation of version 0; round 1 only evaluates.
        for expected in (["train", "evaluate"], ["evaluate"]):
            assert [worker.run_one() for _ in expected] == expected
            [round_id] = rounds.rounds_ready()
            assert rounds.close_round(round_id)
        yield Finished(
            db=db,
            blobs=blobs,
            catalog=catalog,
            jobs=jobs,
            services=services,
            job=jobs.get_job(job.id),
            reported=worker.evaluations,
        )
    finally:
        db.dispose()


def write_artifact(finished: Finished, kind: str, folder: Path) -> Path:
    """The artifact's files, copied out of the blob store as a download would write them."""
    assert finished.job.artifacts is not None
    for path, sha in finished.job.artifacts[kind]["files"].items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(finished.blobs.read(sha))
    return folder


def base_model() -> torch.nn.Module:
    """micro-llama as the job built it: seed 0, vocabulary widened for the chat tokenizer."""
    return load_preset("micro-llama", seed=SPEC.seed, chat=True).model


def greedy_reply(model: torch.nn.Module, tokenizer: Any, max_new_tokens: int) -> str:
    """Greedy decoding without generate() or a KV cache: what generate_reply must produce."""
    ids = render_ids(tokenizer, QUESTION, add_generation_prompt=True)
    prompt_length = len(ids)
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(next_id)
            if next_id == tokenizer.eos_token_id:
                break
    return str(tokenizer.decode(ids[prompt_length:], skip_special_tokens=True)).strip()


def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits  # type: ignore[no-any-return]


def test_the_job_succeeds_with_an_adapter_and_a_merged_model(finished: Finished) -> None:
    job = finished.job
    assert job.status == "succeeded"
    assert job.result_params_sha256 is not None
    assert job.artifacts is not None
    assert set(job.artifacts) == {"adapter", "merged"}
    adapter = job.artifacts["adapter"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(adapter["files"])
    assert adapter["base"] == "micro-llama"
    merged = job.artifacts["merged"]
    assert merged["model"] == job.id
    manifest = finished.catalog.manifest(job.id)
    assert manifest is not None and manifest["files"] == merged["files"]
    assert manifest["source"] == f"job:{job.id}"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(merged["files"])
    for artifact in job.artifacts.values():
        for path, sha in artifact["files"].items():
            assert hashlib.sha256(finished.blobs.read(sha)).hexdigest() == sha, path

    rounds = finished.jobs.list_rounds(job.id)
    assert [(r.index, r.num_train_tasks, r.status) for r in rounds] == [
        (0, 1, "closed"),
        (1, 0, "closed"),
    ]
    # Held-out metrics are what the worker reported: version 0 before, version 1 after.
    assert len(finished.reported) == 2
    assert job.initial_eval_metrics == pytest.approx(
        {k: finished.reported[0][k] for k in ("loss", "token_accuracy", "examples")}
    )
    assert job.eval_metrics == pytest.approx(
        {k: finished.reported[1][k] for k in ("loss", "token_accuracy", "examples")}
    )
    assert job.eval_metrics is not None and job.eval_metrics["examples"] == SPEC.eval_examples
    messages = [e.message for e in finished.jobs.list_events(job.id)[0]]
    assert any("succeeded" in msg and "adapter, merged" in msg for msg in messages), messages


def test_the_adapter_holds_the_trained_lora_matrices(finished: Finished, tmp_path: Path) -> None:
    folder = write_artifact(finished, "adapter", tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == SPEC.lora_rank
    assert config["lora_alpha"] == SPEC.lora_alpha
    # Every linear layer of both blocks, the output head excepted.
    assert len(config["target_modules"]) == 2 * 7
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }

    saved = load_file(str(folder / "adapter_model.safetensors"))
    assert finished.job.result_params_sha256 is not None
    result = state_from_bytes(finished.blobs.read(finished.job.result_params_sha256))
    assert {name.replace(".default", "") for name in result} == set(saved)
    for name, tensor in result.items():
        torch.testing.assert_close(saved[name.replace(".default", "")], tensor, rtol=0, atol=0)
    assert any(t.abs().max() > 0 for n, t in saved.items() if "lora_B" in n)  # it trained


def test_peft_loads_the_adapter_onto_the_base_and_matches_the_merged_model(
    finished: Finished, tmp_path: Path
) -> None:
    adapter = write_artifact(finished, "adapter", tmp_path / "adapter")
    merged = write_artifact(finished, "merged", tmp_path / "merged")

    with_adapter = PeftModel.from_pretrained(base_model(), adapter)
    merged_model = AutoModelForCausalLM.from_pretrained(merged)
    expected = logits(with_adapter)
    torch.testing.assert_close(logits(merged_model), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits(base_model()), expected, atol=1e-3)


def test_the_merged_model_folds_the_adapter_into_the_base_weights(
    finished: Finished, tmp_path: Path
) -> None:
    merged = load_file(
        str(write_artifact(finished, "merged", tmp_path / "m") / "model.safetensors")
    )
    base = base_model().state_dict()
    assert finished.job.result_params_sha256 is not None
    result = state_from_bytes(finished.blobs.read(finished.job.result_params_sha256))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = result[f"{prefix}.lora_A.default.weight"], result[f"{prefix}.lora_B.default.weight"]
    name = "model.layers.0.self_attn.q_proj.weight"
    scale = SPEC.lora_alpha / SPEC.lora_rank
    torch.testing.assert_close(merged[name], base[name] + scale * b @ a, rtol=1e-5, atol=1e-6)
    assert not any("lora_" in key for key in merged)
    # What LoRA does not touch is the base's.
    torch.testing.assert_close(
        merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"], rtol=0, atol=0
    )


def test_the_merged_folder_loads_with_transformers_and_generates(
    finished: Finished, tmp_path: Path
) -> None:
    folder = write_artifact(finished, "merged", tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer) == 259
    reply = generate_reply(model, tokenizer, QUESTION, max_new_tokens=12)
    assert reply == greedy_reply(model, tokenizer, 12)
    # The catalog's snapshot of the job is the same model, so a later job can start from it.
    snapshot = AutoModelForCausalLM.from_pretrained(
        finished.catalog.root / finished.job.id / "files"
    )
    torch.testing.assert_close(logits(snapshot), logits(model), rtol=0, atol=0)


@pytest.fixture
def client(finished: Finished) -> Iterator[TestClient]:
    app = create_app(finished.services)
    with local_client(app) as test_client:
        yield test_client


def test_http_lists_exactly_the_artifact_files(client: TestClient, finished: Finished) -> None:
    response = client.get(f"/v1/swarm/jobs/{finished.job.id}/artifacts")
    assert response.status_code == 200, response.text
    assert finished.job.artifacts is not None
    assert response.json() == {
        "object": "list",
        "data": [
            {
                "kind": kind,
                "files": [
                    {"path": path, "sha256": sha, "bytes": len(finished.blobs.read(sha))}
                    for path, sha in sorted(finished.job.artifacts[kind]["files"].items())
                ],
            }
            for kind in ("adapter", "merged")
        ],
    }
    job = client.get(f"/v1/fine_tuning/jobs/{finished.job.id}").json()
    assert job["fine_tuned_model"] == f"ft:micro-llama:default::{finished.job.id}"
    assert job["swarm"]["artifacts"] == ["adapter", "merged"]


def test_http_serves_the_bytes_of_each_artifact_file(
    client: TestClient, finished: Finished
) -> None:
    assert finished.job.artifacts is not None
    for kind, artifact in finished.job.artifacts.items():
        for path, sha in artifact["files"].items():
            response = client.get(f"/v1/swarm/jobs/{finished.job.id}/artifacts/{kind}/{path}")
            assert response.status_code == 200, (kind, path)
            assert response.content == finished.blobs.read(sha)
            assert response.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "suffix",
    [
        "merged/no-such-file.bin",
        "adapter/model.safetensors",  # a file of the other artifact
        "weights/config.json",
        "merged/files/config.json",
        "merged/%2E%2E/%2E%2E/manifest.json",
    ],
)
def test_http_a_path_not_in_the_artifact_is_404(
    client: TestClient, finished: Finished, suffix: str
) -> None:
    response = client.get(f"/v1/swarm/jobs/{finished.job.id}/artifacts/{suffix}")
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "not_found" and error["type"] == "invalid_request_error"


def test_http_artifacts_of_an_unknown_job_are_404(client: TestClient) -> None:
    assert client.get("/v1/swarm/jobs/ftjob-nope/artifacts").status_code == 404
    assert client.get("/v1/swarm/jobs/ftjob-nope/artifacts/merged/config.json").status_code == 404


def test_http_models_lists_the_fine_tuned_job(client: TestClient, finished: Finished) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    models = {row["id"]: row for row in response.json()["data"]}
    row = models[f"ft:micro-llama:default::{finished.job.id}"]
    assert row["object"] == "model"
    assert row["owned_by"] == "user:default"
    assert row["swarm"]["job_id"] == finished.job.id
    assert row["swarm"]["status"] == "ready"
    assert row["swarm"]["source"] == f"job:{finished.job.id}"
    assert row["swarm"]["family"] == "llama"
    assert row["created"] >= int(finished.job.created_at)
    assert "micro-llama" in models


def test_http_a_running_job_has_no_artifacts(client: TestClient) -> None:
    body = {
        "model": "micro-llama",
        "method": {"type": "supervised"},
        "hyperparameters": {"seq_len": 200, "num_shards": 2, "num_rounds": 1},
    }
    job = client.post("/v1/fine_tuning/jobs", json=body).json()
    services = client.app.state.services  # type: ignore[attr-defined]
    assert services.jobs.prepare_next() == job["id"]
    services.scheduler.admit_jobs()
    job = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert job["status"] == "running"
    assert job["fine_tuned_model"] is None
    listing = client.get(f"/v1/swarm/jobs/{job['id']}/artifacts").json()
    assert listing == {"object": "list", "data": []}
    response = client.get(f"/v1/swarm/jobs/{job['id']}/artifacts/merged/config.json")
    assert response.status_code == 404
    assert job["id"] not in {row["id"] for row in client.get("/v1/models").json()["data"]}
