"""Creating SFT and DPO jobs: adapters, base weights, example shards, and refused input."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from swarm.coordinator.artifacts import build_artifacts
from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.http import create_app
from swarm.coordinator.jobs import JobService, read_dataset
from swarm.coordinator.server import Services as Wired
from swarm.coordinator.storage import Database, Event, Job, Round, Task
from swarm.models import (
    config_from_bytes,
    decode_examples,
    load_builtin_bytes,
    parse_dataset,
    state_from_bytes,
    state_to_bytes,
)
from swarm.models.chat import byte_chat_tokenizer, tokenize_chat, tokenize_preference
from swarm.models.sources import load_preset, unique_state
from swarm.protocol.errors import ConfigError
from swarm.scheduler import JobSpec
from tests.conftest import local_client, wire_services

SMALL: dict[str, Any] = {
    "model": "micro-llama",
    "seq_len": 200,  # the byte-level preset tokenizer needs ~150 tokens for a short chat
    "num_rounds": 1,
    "inner_steps": 2,
    "warmup_steps": 1,
    "batch_size": 2,
    "min_clients": 2,
    "num_shards": 4,
    "codec": "fp16",
}


def spec(**changes: Any) -> JobSpec:
    """A small chat job on micro-llama (SFT unless `method` says otherwise)."""
    return JobSpec(**{**SMALL, "method": "sft", **changes})


@dataclass
class Services:
    db: Database
    blobs: BlobStore
    catalog: ModelCatalog
    jobs: JobService
    wired: Wired

    def start(self, job_spec: JobSpec) -> Job:
        """Create, prepare and start a job, as the coordinator's threads would."""
        job = self.jobs.create_job(job_spec)
        assert self.jobs.prepare_next() == job.id
        self.wired.scheduler.admit_jobs()
        return self.jobs.get_job(job.id)

    def blob_names(self) -> set[str]:
        return {
            p.name for p in self.blobs.root.rglob("*") if p.is_file() and "incoming" not in p.parts
        }

    def row_counts(self) -> dict[str, int]:
        with self.db.transaction() as session:
            return {
                table.__name__: session.scalar(select(func.count()).select_from(table)) or 0
                for table in (Job, Event, Round, Task)
            }


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    wired = wire_services(tmp_path)
    try:
        yield Services(
            db=wired.db,
            blobs=wired.blobs,
            catalog=wired.catalog,
            # Datasets are read from the test's own folder.
            jobs=JobService(
                wired.db,
                wired.blobs,
                wired.rounds,
                wired.catalog,
                wired.ledger,
                datasets_dir=tmp_path,
            ),
            wired=wired,
        )
    finally:
        wired.db.dispose()


def preset_weights_sha256(name: str = "micro-llama", seed: int = 0) -> str:
    """The blob a preset's weights are stored as: what LoRA and DPO workers load as the base."""
    state = unique_state(load_preset(name, seed=seed, chat=True).model)
    return hashlib.sha256(state_to_bytes(state)).hexdigest()


def all_sets(services: Services, job: Job, method: str) -> list[dict[str, Any]]:
    vocab_size = config_from_bytes(services.blobs.read(job.model_config_sha256))["vocab_size"]
    return [
        decode_examples(services.blobs.read(sha), method, vocab_size) for sha in job.shard_sha256s
    ]


def sequences(sequence_set: Any) -> list[tuple[int, ...]]:
    offsets = sequence_set.offsets
    return [
        tuple(sequence_set.ids[offsets[i] : offsets[i + 1]].tolist())
        for i in range(len(sequence_set))
    ]


def round_zero_params(services: Services, job: Job) -> dict[str, torch.Tensor]:
    [round_0] = services.jobs.list_rounds(job.id)
    return state_from_bytes(services.blobs.read(round_0.params_sha256))


# -- jobs that are accepted ------------------------------------------------------------------


def test_lora_sft_job_trains_only_adapters_on_the_shipped_instructions(
    services: Services,
) -> None:
    job = services.start(spec())
    assert job.spec["adapter"] == "lora"
    assert job.spec["dataset"] == "builtin:smol_instruct"
    assert job.spec["validation_dataset"] == "builtin:smol_instruct_heldout"
    assert job.param_shapes and all("lora_" in name for name in job.param_shapes)
    assert {n.split(".")[-2] for n in job.param_shapes} == {"default"}
    assert job.num_trainable_params == sum(torch.Size(s).numel() for s in job.param_shapes.values())
    # The adapters start as the identity: B is zero, so version 0 is exactly the base model.
    params = round_zero_params(services, job)
    assert set(params) == set(job.param_shapes)
    assert all(not params[n].any() for n in params if "lora_B" in n)
    assert all(params[n].any() for n in params if "lora_A" in n)

    # Workers load the frozen base weights: micro-llama at the job's seed, as one blob.
    assert job.base_sha256s == [preset_weights_sha256()]
    base = state_from_bytes(services.blobs.read(job.base_sha256s[0]))
    assert "model.embed_tokens.weight" in base
    assert not any("lora_" in name for name in base)

    # Every training example is in exactly one shard, tokenized with the byte chat tokenizer.
    tokenizer = byte_chat_tokenizer()
    train = parse_dataset(load_builtin_bytes("builtin:smol_instruct"), "chat")
    expected = [tokenize_chat(tokenizer, e, 200) for e in train]
    shards = [s["sequences"] for s in all_sets(services, job, "sft")]
    assert len(shards) == 4
    assert all(len(s) >= 100 for s in shards)  # 480 examples split evenly
    assert sorted(seq for s in shards for seq in sequences(s)) == sorted(
        tuple(e.ids.tolist()) for e in expected
    )
    for shard in shards:  # the loss counts only the assistant's reply and its end marker
        for i in range(len(shard)):
            piece = slice(shard.offsets[i], shard.offsets[i + 1])
            reply = tokenizer.decode(shard.ids[piece][shard.mask[piece] == 1].tolist())
            assert reply.startswith("The answer is") and reply.endswith("<|im_end|>\n"), reply

    # The held-out set is the shipped held-out file, in order.
    heldout = parse_dataset(load_builtin_bytes("builtin:smol_instruct_heldout"), "chat")
    vocab_size = config_from_bytes(services.blobs.read(job.model_config_sha256))["vocab_size"]
    assert vocab_size == len(tokenizer) == 259
    [heldout_set] = decode_examples(
        services.blobs.read(job.heldout_sha256), "sft", vocab_size
    ).values()
    assert sequences(heldout_set) == [
        tuple(tokenize_chat(tokenizer, e, 200).ids.tolist()) for e in heldout
    ]
    events = [e.message for e in services.jobs.list_events(job.id)[0]]
    assert any("480 chat examples into 4 shards and 64 held-out" in m for m in events), events


def test_lora_dpo_job_holds_preference_pairs_and_the_frozen_base(services: Services) -> None:
    job = services.start(spec(method="dpo"))
    assert job.spec["dataset"] == "builtin:smol_prefs"
    assert job.spec["validation_dataset"] == "builtin:smol_prefs_heldout"
    assert job.spec["adapter"] == "lora"
    assert all("lora_" in name for name in job.param_shapes)
    assert job.base_sha256s == [preset_weights_sha256()]
    assert all(services.blobs.exists(sha) for sha in job.base_sha256s)

    tokenizer = byte_chat_tokenizer()
    train = parse_dataset(load_builtin_bytes("builtin:smol_prefs"), "preference")
    expected = []
    for example in train:
        chosen, rejected = tokenize_preference(tokenizer, example, 200)
        expected.append((tuple(chosen.ids.tolist()), tuple(rejected.ids.tolist())))
    pairs = []
    for sets in all_sets(services, job, "dpo"):
        assert set(sets) == {"chosen", "rejected"}
        pairs += list(zip(sequences(sets["chosen"]), sequences(sets["rejected"]), strict=True))
    assert sorted(pairs) == sorted(expected)
    assert len(pairs) == 320

    heldout = parse_dataset(load_builtin_bytes("builtin:smol_prefs_heldout"), "preference")
    sets = decode_examples(services.blobs.read(job.heldout_sha256), "dpo", 259)
    assert len(sets["chosen"]) == len(sets["rejected"]) == len(heldout) == 64
    first_chosen, first_rejected = tokenize_preference(tokenizer, heldout[0], 200)
    assert sequences(sets["chosen"])[0] == tuple(first_chosen.ids.tolist())
    assert sequences(sets["rejected"])[0] == tuple(first_rejected.ids.tolist())


def test_full_sft_sends_no_base_weights(services: Services) -> None:
    job = services.start(spec(adapter="full"))
    assert job.base_sha256s == []
    assert not any("lora_" in name for name in job.param_shapes)
    assert "model.embed_tokens.weight" in job.param_shapes
    # Version 0 is the whole preset: workers need nothing else.
    params = round_zero_params(services, job)
    preset = unique_state(load_preset("micro-llama", seed=0, chat=True).model)
    assert set(params) == set(preset)
    for name, tensor in preset.items():
        torch.testing.assert_close(params[name], tensor, rtol=0, atol=0)


def test_full_dpo_sends_the_base_as_its_reference(services: Services) -> None:
    job = services.start(spec(method="dpo", adapter="full"))
    assert not any("lora_" in name for name in job.param_shapes)
    assert job.base_sha256s == [preset_weights_sha256()]
    assert services.blobs.exists(job.base_sha256s[0])


def test_a_job_starts_from_another_jobs_merged_result_only_once_it_exists(
    services: Services,
) -> None:
    sft = services.start(spec())
    with pytest.raises(ConfigError, match=f"unknown model '{sft.id}'"):
        services.jobs.create_job(spec(model=sft.id, method="dpo"))
    assert services.row_counts()["Job"] == 1

    # What closing the final round does: package the version as the job's merged result.
    params = round_zero_params(services, sft)
    params = {n: t + 0.25 if "lora_B" in n else t for n, t in params.items()}
    build_artifacts(services.jobs.get_job(sft.id), params, services.blobs, services.catalog)

    dpo = services.start(spec(model=sft.id, method="dpo"))
    manifest = services.catalog.manifest(sft.id)
    assert manifest is not None
    assert dpo.model == sft.id
    assert dpo.base_sha256s == [manifest["files"]["model.safetensors"]]
    assert all("lora_" in name for name in dpo.param_shapes)
    # Its base is the merged result, not micro-llama.
    merged = state_from_bytes(services.blobs.read(dpo.base_sha256s[0]))
    preset = unique_state(load_preset("micro-llama", seed=0, chat=True).model)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], preset[name])
    torch.testing.assert_close(
        merged["model.embed_tokens.weight"], preset["model.embed_tokens.weight"]
    )


# -- input that is refused, with nothing stored ----------------------------------------------


def chat_line(question: str, answer: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
    )


def preference_line(question: str) -> str:
    return json.dumps(
        {
            "input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": "4."}],
            "non_preferred_output": [{"role": "assistant", "content": "Five."}],
        }
    )


GOOD = [chat_line(f"What is {i} + 1?", f"{i + 1}.") for i in range(10)]
OUT_OF_ORDER = json.dumps(
    {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": "Hi."},
        ]
    }
)
LONG_PROMPT = chat_line("Repeat after me: " + "blah " * 60, "No.")

BAD_DATA = {
    "malformed JSON": (
        [GOOD[0], '{"messages": [', *GOOD[1:]],
        {},
        r"line 2: not valid JSON",
    ),
    "a preference line in an SFT dataset": (
        [*GOOD[:3], preference_line("What is 2 + 2?"), *GOOD[3:]],
        {},
        r"line 4: this looks like a preference example .*supervised fine-tuning needs",
    ),
    "an empty file": ([], {}, "the file has no examples"),
    "a file of blank lines": (["", "   ", ""], {}, "the file has no examples"),
    "roles out of order": (
        [*GOOD[:5], OUT_OF_ORDER, *GOOD[5:]],
        {},
        r'line 6: messages\[1\]\.role: expected "assistant" after "user", got "user"',
    ),
    "a reply entirely beyond seq_len": (
        [*GOOD[:2], LONG_PROMPT, *GOOD[2:]],
        {},
        r"line 3: no reply token is left within the job's seq_len of 200",
    ),
    "more shards than examples": (
        GOOD,
        {"num_shards": 16},
        r"9 training examples, fewer than num_shards=16",
    ),
    "chat lines in a DPO dataset": (
        GOOD,
        {"method": "dpo"},
        r"line 1: this looks like a chat example .*preference fine-tuning \(DPO\) needs",
    ),
}


def assert_nothing_stored(services: Services, blobs_before: set[str]) -> None:
    assert services.row_counts() == {"Job": 0, "Event": 0, "Round": 0, "Task": 0}
    assert services.jobs.list_jobs().jobs == []
    assert services.blob_names() == blobs_before
    assert not services.catalog.root.exists()


@pytest.mark.parametrize(("lines", "changes", "match"), BAD_DATA.values(), ids=BAD_DATA.keys())
def test_bad_datasets_are_refused_naming_the_problem(
    services: Services, tmp_path: Path, lines: list[str], changes: dict[str, Any], match: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    before = services.blob_names()
    with pytest.raises(ConfigError, match=match):
        services.jobs.create_job(spec(dataset=str(path), **changes))
    assert_nothing_stored(services, before)


def test_a_bad_validation_dataset_is_refused(services: Services, tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("\n".join(GOOD))
    (tmp_path / "heldout.jsonl").write_text(OUT_OF_ORDER)
    before = services.blob_names()
    with pytest.raises(ConfigError, match=r"line 1: messages\[1\]\.role"):
        services.jobs.create_job(
            spec(
                dataset=str(tmp_path / "train.jsonl"),
                validation_dataset=str(tmp_path / "heldout.jsonl"),
            )
        )
    assert_nothing_stored(services, before)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"seq_len": 300}, "seq_len 300 is longer than micro-llama's context of 256 tokens"),
        ({"model": "no-such-model"}, "unknown model 'no-such-model'"),
        ({"model": "gpt2"}, "not pulled yet; run: swarm models pull gpt2"),
        ({"model": "../models"}, "unknown model"),
        ({"dataset": "/no/such/file.jsonl"}, "neither builtin:NAME nor a file"),
        ({"dataset": "builtin:no_such_set"}, "no_such_set"),
    ],
)
def test_bad_settings_are_refused_naming_the_problem(
    services: Services, changes: dict[str, Any], match: str
) -> None:
    before = services.blob_names()
    with pytest.raises(ConfigError, match=match):
        services.jobs.create_job(spec(**changes))
    assert_nothing_stored(services, before)


@pytest.mark.parametrize("method", ["ppo", "SFT", ""])
def test_an_unknown_method_is_refused(method: str) -> None:
    with pytest.raises(ConfigError, match="method must be one of lm, sft, dpo"):
        JobSpec.from_dict({"model": "micro-llama", "method": method})


def test_a_refused_job_stores_no_blob_at_all(services: Services, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"messages": [\n')
    before = services.blob_names()
    with pytest.raises(ConfigError):
        services.jobs.create_job(spec(dataset=str(path)))
    assert services.blob_names() == before


# -- the HTTP route ----------------------------------------------------------------------------

HTTP_HYPERPARAMETERS = {k: v for k, v in SMALL.items() if k != "model"}


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    app = create_app(replace(services.wired, jobs=services.jobs))
    with local_client(app) as test_client:
        yield test_client


def post_job(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/fine_tuning/jobs", json={"model": "micro-llama", **body})


def assert_openai_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]  # type: ignore[no-any-return]


def test_post_dpo_method_object_sets_beta(client: TestClient, services: Services) -> None:
    response = post_job(
        client,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
        hyperparameters=HTTP_HYPERPARAMETERS,
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["swarm"]["spec"]["method"] == "dpo"
    assert job["swarm"]["spec"]["dpo_beta"] == 0.2
    assert job["swarm"]["spec"]["adapter"] == "lora"
    assert job["training_file"] == "builtin:smol_prefs"
    assert job["validation_file"] == "builtin:smol_prefs_heldout"
    assert job["status"] == "validating_files"
    assert services.jobs.prepare_next() == job["id"]
    stored = services.jobs.get_job(job["id"])
    assert stored.status == "queued"
    assert stored.spec["dpo_beta"] == 0.2
    assert stored.base_sha256s == [preset_weights_sha256()]


def test_post_ignores_auto_values_of_the_method_object(client: TestClient) -> None:
    hyper = {k: v for k, v in HTTP_HYPERPARAMETERS.items() if k != "batch_size"}
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    response = post_job(
        client,
        method={"type": "supervised", "supervised": {"hyperparameters": auto}},
        hyperparameters=hyper,
    )
    assert response.status_code == 200, response.text
    spec_ = response.json()["swarm"]["spec"]
    assert spec_["method"] == "sft"
    assert spec_["batch_size"] == JobSpec().batch_size
    assert spec_["inner_lr"] == 2e-4  # LoRA SFT's default

    dpo = post_job(
        client,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "batch_size": 3}}},
        hyperparameters=hyper,
    )
    assert dpo.status_code == 200, dpo.text
    assert dpo.json()["swarm"]["spec"]["dpo_beta"] == JobSpec().dpo_beta
    assert dpo.json()["swarm"]["spec"]["batch_size"] == 3


def test_post_method_in_hyperparameters(client: TestClient) -> None:
    response = post_job(client, hyperparameters={**HTTP_HYPERPARAMETERS, "method": "dpo"})
    assert response.status_code == 200, response.text
    assert response.json()["swarm"]["spec"]["method"] == "dpo"
    assert response.json()["training_file"] == "builtin:smol_prefs"


@pytest.mark.parametrize("kind", ["reinforcement", None, "sft"])
def test_post_bad_method_type_is_a_400(client: TestClient, kind: str | None) -> None:
    error = assert_openai_error(
        post_job(client, method={"type": kind}, hyperparameters=HTTP_HYPERPARAMETERS), 400
    )
    assert "method.type must be one of ['dpo', 'lm', 'supervised']" in error["message"]
    assert error["code"] == "invalid_value"
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_post_unknown_method_in_hyperparameters_is_a_400(client: TestClient) -> None:
    error = assert_openai_error(
        post_job(client, hyperparameters={**HTTP_HYPERPARAMETERS, "method": "ppo"}), 400
    )
    assert "method must be one of" in error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_post_bad_training_file_is_a_400_naming_the_line(
    client: TestClient, tmp_path: Path
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([*GOOD[:4], OUT_OF_ORDER, *GOOD[4:]]))
    error = assert_openai_error(
        post_job(
            client,
            training_file=str(path),
            method={"type": "supervised"},
            hyperparameters=HTTP_HYPERPARAMETERS,
        ),
        400,
    )
    assert 'line 5: messages[1].role: expected "assistant"' in error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


@pytest.mark.parametrize(
    "method",
    [
        {"type": ["dpo"]},
        {"type": "dpo", "dpo": {"hyperparameters": [0.2]}},
        {"type": "dpo", "dpo": {"hyperparameters": "beta=0.2"}},
    ],
    ids=["type-list", "hyperparameters-list", "hyperparameters-string"],
)
def test_post_malformed_method_object_is_a_400(client: TestClient, method: dict[str, Any]) -> None:
    assert_openai_error(post_job(client, method=method, hyperparameters=HTTP_HYPERPARAMETERS), 400)


def test_datasets_are_read_only_from_the_datasets_folder(
    services: Services, tmp_path: Path
) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jsonl"
    outside.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    for name in (str(outside), f"../{outside.name}"):
        with pytest.raises(ConfigError, match="datasets folder"):
            services.jobs.create_job(spec(dataset=name))
    assert services.row_counts()["Job"] == 0


def test_a_coordinator_without_a_datasets_folder_serves_builtin_data_only(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(ConfigError, match="builtin: datasets only"):
        read_dataset(str(path), None)
    assert read_dataset("builtin:smol_instruct", None).startswith(b'{"messages"')
