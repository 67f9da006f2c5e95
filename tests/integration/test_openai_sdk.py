"""Contract tests: the official `openai` Python SDK, unmodified, against a real coordinator.

One coordinator process and two `swarmclient join` processes run for the whole module. The
first API key is made in setup mode (from this machine, with no key), then two researchers
get their own. Every call below goes through `openai.OpenAI(base_url=..., api_key=...)`; the
last test trains a job to the end on the real clients, follows it with `swarm jobs watch`,
downloads its result with `swarm jobs download` and loads it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from swarm.models import load_builtin_bytes
from swarm.models.sources import load_preset
from tests.conftest import run_swarm

pytestmark = pytest.mark.integration

CHAT = load_builtin_bytes("builtin:smol_instruct")
PREFS = load_builtin_bytes("builtin:smol_prefs")
# Swarm settings for a job that finishes in seconds, sent as OpenAI SDKs send extras.
QUICK = {
    "seq_len": 200,
    "num_rounds": 2,
    "inner_steps": 3,
    "warmup_steps": 1,
    "min_clients": 2,
    "num_shards": 4,
    "eval_examples": 16,
}


@dataclass
class Swarm:
    url: str
    logs: Path
    alice: openai.OpenAI
    bob: openai.OpenAI
    alice_key: str

    def cli(self, *args: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
        """Run `swarm ARGS` as alice, as a person would (key and URL from the environment)."""
        env = {**os.environ, "SWARM_URL": self.url, "SWARM_API_KEY": self.alice_key}
        return subprocess.run(
            [sys.executable, "-m", "swarm.coordinator", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("sdk")
    with ExitStack() as stack:
        url = run_swarm(stack, root, ["sdk-0", "sdk-1"])
        with httpx.Client(base_url=url) as http:  # setup mode: this machine is the operator
            admin = http.post("/v1/swarm/keys", json={"user": "admin", "role": "operator"})
            assert admin.status_code == 200, admin.text
            headers = {"Authorization": f"Bearer {admin.json()['key']}"}
            keys = {
                user: http.post("/v1/swarm/keys", json={"user": user}, headers=headers).json()
                for user in ("alice", "bob")
            }
        sdk = {
            user: stack.enter_context(
                openai.OpenAI(base_url=f"{url}/v1", api_key=key["key"], max_retries=0)
            )
            for user, key in keys.items()
        }
        yield Swarm(url, root, sdk["alice"], sdk["bob"], keys["alice"]["key"])


def test_files_round_trip_through_the_sdk(swarm: Swarm) -> None:
    uploaded = swarm.alice.files.create(file=("train.jsonl", CHAT), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.object == "file"
    assert (uploaded.bytes, uploaded.filename, uploaded.purpose) == (
        len(CHAT),
        "train.jsonl",
        "fine-tune",
    )
    assert uploaded.id in [f.id for f in swarm.alice.files.list()]
    assert swarm.alice.files.retrieve(uploaded.id).bytes == len(CHAT)
    assert swarm.alice.files.content(uploaded.id).read() == CHAT
    assert uploaded.id not in [f.id for f in swarm.bob.files.list()]
    with pytest.raises(openai.NotFoundError):
        swarm.bob.files.retrieve(uploaded.id)
    deleted = swarm.alice.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    with pytest.raises(openai.NotFoundError):
        swarm.alice.files.retrieve(uploaded.id)


def test_files_page_with_the_sdks_cursor(swarm: Swarm) -> None:
    ids = [
        swarm.bob.files.create(file=(f"part-{i}.jsonl", CHAT), purpose="fine-tune").id
        for i in range(3)
    ]
    first = swarm.bob.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    assert [f.id for f in swarm.bob.files.list(limit=2)] == ids[::-1]  # auto-paging


def test_bad_data_is_an_openai_error_with_the_line(swarm: Swarm) -> None:
    broken = CHAT.splitlines(keepends=True)[0] + b"{not json\n"
    with pytest.raises(openai.BadRequestError) as caught:
        swarm.alice.files.create(file=("broken.jsonl", broken), purpose="fine-tune")
    error = caught.value
    assert error.status_code == 400 and error.param == "file"
    assert "line 2" in error.message
    with pytest.raises(openai.BadRequestError):
        swarm.alice.files.create(file=("x.jsonl", CHAT), purpose="assistants")  # type: ignore[arg-type]


def test_a_wrong_key_is_an_authentication_error(swarm: Swarm) -> None:
    with (
        openai.OpenAI(
            base_url=f"{swarm.url}/v1", api_key="sk-swarm-guessed", max_retries=0
        ) as stranger,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        stranger.fine_tuning.jobs.list()
    assert caught.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"model": "gpt-9"}, "model"),
        ({"training_file": "file-missing"}, "training_file"),
        ({"hyperparameters": {"n_epochs": -1}}, "n_epochs"),
        ({"method": {"type": "dpo"}}, "training_file"),  # chat examples are not pairs
        ({"suffix": "has spaces"}, "suffix"),
    ],
)
def test_bad_jobs_are_refused_and_nothing_is_queued(
    swarm: Swarm, changes: dict[str, object], param: str
) -> None:
    file_id = swarm.alice.files.create(file=("train.jsonl", CHAT), purpose="fine-tune").id
    before = len(swarm.alice.fine_tuning.jobs.list(limit=100).data)
    body: dict[str, object] = {"model": "micro-llama", "training_file": file_id, **changes}
    if "method" not in changes:
        body["method"] = {"type": "supervised"}
    with pytest.raises(openai.BadRequestError) as caught:
        swarm.alice.fine_tuning.jobs.create(**body, extra_body=QUICK)  # type: ignore[arg-type]
    assert caught.value.param == param, caught.value.message
    assert len(swarm.alice.fine_tuning.jobs.list(limit=100).data) == before


def test_jobs_are_created_listed_followed_and_cancelled_through_the_sdk(swarm: Swarm) -> None:
    file_id = swarm.alice.files.create(file=("prefs.jsonl", PREFS), purpose="fine-tune").id
    job = swarm.alice.fine_tuning.jobs.create(
        model="micro-llama",
        training_file=file_id,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": "auto", "batch_size": 2}},
        },
        suffix="prefs",
        seed=7,
        metadata={"team": "alignment"},
        extra_body={**QUICK, "num_rounds": 50, "lora_rank": 4},
    )
    assert job.object == "fine_tuning.job" and job.status == "validating_files"
    assert (job.model, job.training_file, job.seed) == ("micro-llama", file_id, 7)
    assert job.metadata == {"team": "alignment"}
    assert job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert job.hyperparameters.batch_size == 2

    assert swarm.alice.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert job.id in [j.id for j in swarm.alice.fine_tuning.jobs.list(limit=1)]
    with pytest.raises(openai.NotFoundError):
        swarm.bob.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        swarm.bob.fine_tuning.jobs.cancel(job.id)
    assert job.id not in [j.id for j in swarm.bob.fine_tuning.jobs.list()]

    events = swarm.alice.fine_tuning.jobs.list_events(job.id, limit=1)
    assert len(events.data) == 1 and events.data[0].object == "fine_tuning.job.event"
    assert events.data[0].message
    every = list(swarm.alice.fine_tuning.jobs.list_events(job.id, limit=1))  # auto-paging
    assert len(every) >= 1 and every[-1].message.startswith("validating")
    assert list(swarm.alice.fine_tuning.jobs.checkpoints.list(job.id)) == []

    cancelled = swarm.alice.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.ConflictError):
        swarm.alice.fine_tuning.jobs.cancel(job.id)


def test_a_job_from_the_sdk_trains_on_clients_and_its_model_loads(
    swarm: Swarm, tmp_path: Path
) -> None:
    file_id = swarm.alice.files.create(file=("train.jsonl", CHAT), purpose="fine-tune").id
    job = swarm.alice.fine_tuning.jobs.create(
        model="micro-llama",
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}},
        suffix="assistant",
        extra_body=QUICK,
    )
    watched = swarm.cli("jobs", "watch", job.id, "--interval", "0.3")
    assert watched.returncode == 0, (watched.stdout, watched.stderr, swarm.logs)
    done = swarm.alice.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded"
    assert done.fine_tuned_model == f"ft:micro-llama:alice:assistant:{job.id}"
    assert f"succeeded: {done.fine_tuned_model}" in watched.stdout
    assert "2/2 rounds" in watched.stdout
    assert "round 1: train loss" in watched.stdout  # the events, as they came

    metrics = [e for e in swarm.alice.fine_tuning.jobs.list_events(job.id) if e.type == "metrics"]
    assert [e.data["step"] for e in metrics][::-1] == [1, 2, 2]  # type: ignore[index]
    assert all(e.data["total_steps"] == 2 for e in metrics)  # type: ignore[index]
    checkpoints = list(swarm.alice.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [2, 1]
    assert all(c.fine_tuning_job_id == job.id for c in checkpoints)
    assert checkpoints[0].metrics.valid_loss is not None

    models = [m.id for m in swarm.alice.models.list()]
    assert "micro-llama" in models and done.fine_tuned_model in models
    assert done.fine_tuned_model not in [m.id for m in swarm.bob.models.list()]
    assert swarm.alice.models.retrieve(done.fine_tuned_model).owned_by == "user:alice"

    for kind in ("adapter", "merged"):
        fetched = swarm.cli(
            "jobs", "download", job.id, "--kind", kind, "--output", str(tmp_path / kind)
        )
        assert fetched.returncode == 0, fetched.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = load_preset("micro-llama", seed=0, chat=True).model
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    tokens = torch.tensor([[1, 72, 105, 33, 40, 41]])
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(input_ids=tokens).logits, merged(input_ids=tokens).logits, atol=1e-4, rtol=0
        )

    follow_up = swarm.alice.fine_tuning.jobs.create(
        model=done.fine_tuned_model,
        training_file=file_id,
        method={"type": "supervised"},
        extra_body=QUICK,
    )
    assert follow_up.model == job.id  # continues from the fine-tuned result
    swarm.alice.fine_tuning.jobs.cancel(follow_up.id)
    with pytest.raises(openai.BadRequestError) as caught:
        swarm.bob.fine_tuning.jobs.create(
            model=done.fine_tuned_model,
            training_file="builtin:smol_instruct",
            method={"type": "supervised"},
            extra_body=QUICK,
        )
    assert caught.value.param == "model"
