"""End to end: LoRA SFT, then DPO from its result, by two client processes; then a download.

A coordinator process and two `swarmclient join` processes talk over loopback; the test is an
HTTP client, and `swarm jobs download` runs as its own process against the HTTP port.
"""

from __future__ import annotations

import hashlib
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from swarm.coordinator.demo import download_artifact, start_client, start_coordinator, stop_process
from swarm.models import SequenceSet, load_builtin_bytes, parse_dataset
from swarm.models.chat import byte_chat_tokenizer, tokenize_chat
from swarm.models.objectives import SupervisedFineTuning
from swarm.models.sources import load_preset

pytestmark = pytest.mark.integration

SFT = {
    "seq_len": 256,
    "num_rounds": 2,
    "inner_steps": 3,
    "warmup_steps": 1,
    "batch_size": 4,
    "min_clients": 2,
    "num_shards": 4,
    "inner_lr": 3e-3,
    "eval_examples": 32,
}
DPO = {**SFT, "num_rounds": 1, "inner_lr": 1e-3}


@dataclass
class Swarm:
    http: httpx.Client
    url: str
    logs: Path

    def run_job(self, body: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
        response = self.http.post("/v1/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job  # type: ignore[no-any-return]
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish in {timeout_s}s; logs in {self.logs}")

    def rounds(self, job_id: str) -> list[dict[str, Any]]:
        return self.http.get(f"/v1/swarm/jobs/{job_id}/rounds").json()["data"]  # type: ignore[no-any-return]


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    with ExitStack() as stack:
        log = stack.enter_context((tmp_path / "coordinator.log").open("w"))
        coordinator, ready = start_coordinator(tmp_path / "coordinator", log)
        stack.callback(stop_process, coordinator, signal.SIGTERM)
        target = f"127.0.0.1:{ready['grpc_port']}"
        for i in range(2):
            client_log = stack.enter_context((tmp_path / f"client-{i}.log").open("w"))
            client = start_client(target, f"client-{i}", tmp_path / f"client-{i}", client_log)
            stack.callback(stop_process, client)
        url = f"http://127.0.0.1:{ready['http_port']}"
        http = stack.enter_context(httpx.Client(base_url=url, timeout=60.0))
        yield Swarm(http=http, url=url, logs=tmp_path)


def initial_sft_metrics() -> dict[str, float]:
    """Held-out metrics of tiny-llama at the job's seed, measured here: what version 0 scores.

    LoRA's B matrices start at zero, so the untrained adapter is exactly the base model.
    """
    tokenizer = byte_chat_tokenizer()
    examples = parse_dataset(load_builtin_bytes("builtin:smol_instruct_heldout"), "chat")
    heldout = SequenceSet.from_sequences(
        [tokenize_chat(tokenizer, e, SFT["seq_len"]) for e in examples]
    )
    model = load_preset("tiny-llama", seed=0, chat=True).model
    return SupervisedFineTuning(heldout).evaluate(model, 16, SFT["eval_examples"])


def download(swarm: Swarm, job_id: str, kind: str, output: Path) -> str:
    """Run `swarm jobs download` as its own process; what it printed."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarm.coordinator",
            "jobs",
            "--url",
            swarm.url,
            "download",
            job_id,
            "--kind",
            kind,
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_sft_then_dpo_from_its_result_then_download(swarm: Swarm, tmp_path: Path) -> None:
    sft = swarm.run_job(
        {"model": "tiny-llama", "method": {"type": "supervised"}, "hyperparameters": SFT}
    )
    assert sft["status"] == "succeeded", (sft, swarm.logs)
    assert sft["swarm"]["spec"]["adapter"] == "lora"
    rounds = swarm.rounds(sft["id"])
    assert [(r["round"], r["num_train_tasks"], r["num_clients"]) for r in rounds] == [
        (0, 2, 2),
        (1, 2, 2),
        (2, 0, 0),  # the final round only evaluates
    ]
    initial = sft["swarm"]["initial_eval_metrics"]
    assert rounds[0]["eval_metrics"] == initial
    expected = initial_sft_metrics()
    assert initial["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert initial["token_accuracy"] == pytest.approx(expected["token_accuracy"], abs=1e-6)
    assert initial["examples"] == SFT["eval_examples"]
    final = sft["swarm"]["eval_metrics"]
    assert final == rounds[2]["eval_metrics"]
    assert final["loss"] < 0.95 * initial["loss"], (initial, final)
    assert final["token_accuracy"] > initial["token_accuracy"] + 0.1, (initial, final)
    assert sft["fine_tuned_model"] == f"ft:tiny-llama:default::{sft['id']}"

    dpo = swarm.run_job(
        {
            "model": sft["id"],
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
            "hyperparameters": DPO,
        }
    )
    assert dpo["status"] == "succeeded", (dpo, swarm.logs)
    assert dpo["model"] == sft["id"]
    dpo_rounds = swarm.rounds(dpo["id"])
    assert [r["num_train_tasks"] for r in dpo_rounds] == [2, 0]
    start = dpo["swarm"]["initial_eval_metrics"]
    assert start == dpo_rounds[0]["eval_metrics"]
    # The policy starts equal to its reference (the SFT result): every reward ties.
    assert start["reward_accuracy"] == 0.5
    assert start["reward_margin"] == 0.0
    assert start["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert start["examples"] == DPO["eval_examples"]
    end = dpo["swarm"]["eval_metrics"]
    assert end["loss"] < math.log(2) - 0.05, (start, end)
    assert end["reward_accuracy"] > 0.5, (start, end)

    listing = swarm.http.get(f"/v1/swarm/jobs/{dpo['id']}/artifacts").json()["data"]
    merged = next(a for a in listing if a["kind"] == "merged")
    printed = download(swarm, dpo["id"], "merged", tmp_path / "result")
    for entry in merged["files"]:
        path = tmp_path / "result" / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], entry
        assert f"{path} ({entry['bytes']:,} bytes)" in printed
    assert sorted(p.name for p in (tmp_path / "result").iterdir()) == sorted(
        e["path"] for e in merged["files"]
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "result")
    assert model.config.model_type == "llama"
    model.eval()
    input_ids = torch.tensor([[1, 72, 105, 258, 40, 41]])
    with torch.no_grad():
        dpo_logits = model(input_ids=input_ids).logits
    assert dpo_logits.shape == (1, 6, 259)
    assert torch.isfinite(dpo_logits).all()

    # The SFT job's adapter, loaded by peft onto tiny-llama, is its merged model.
    download_artifact(swarm.http, sft["id"], "adapter", tmp_path / "sft-adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (tmp_path / "sft-adapter").iterdir()
    }
    download_artifact(swarm.http, sft["id"], "merged", tmp_path / "sft-merged")
    base = load_preset("tiny-llama", seed=0, chat=True).model
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "sft-adapter").eval()
    sft_merged = AutoModelForCausalLM.from_pretrained(tmp_path / "sft-merged").eval()
    with torch.no_grad():
        sft_logits = sft_merged(input_ids=input_ids).logits
        adapter_logits = with_adapter(input_ids=input_ids).logits
    torch.testing.assert_close(sft_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(dpo_logits, sft_logits, atol=1e-4)  # DPO moved it
