"""`swarm bench finetune`: the demo's recipe measured against its targets.

1. The swarm: a coordinator and two client processes run LoRA SFT of SmolLM2-135M-Instruct on
   the shipped instructions, then DPO from the SFT result on the shipped preference pairs (the
   demo, with updates and broadcasts uncompressed, so the parity check below is exact).
2. Single-process references of the SFT job, in this process with plain PyTorch:
   - the same recipe replayed: every round's tasks (same seeds, shards and inner AdamW steps),
     averaged and stepped with the same outer Nesterov SGD, without processes, network,
     database or serialization: the swarm must match it within 1% held-out loss;
   - plain AdamW for the same number of steps on the combined batches of the clients, for
     context (no DiLoCo rounds at all).

Targets: SFT lowers held-out loss by at least 15%; DPO raises held-out reward accuracy from
50% (an untrained policy equals its reference) to at least 80%; parity within 1%.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select

from swarm.coordinator import spans
from swarm.coordinator.aggregation import nesterov_step
from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.demo import (
    DPO_HYPERPARAMETERS,
    SFT_HYPERPARAMETERS,
    DemoConfig,
    recipe,
    run_demo,
)
from swarm.coordinator.jobs import prepare_data
from swarm.coordinator.storage import Database, Job, Round, Task, sqlite_url
from swarm.models import (
    Objective,
    apply_adapter,
    build_objective,
    load_trainable_state,
    run_inner_loop,
    trainable_state,
)
from swarm.scheduler import JobSpec, task_seed
from swarm.scheduler.work import staleness_weight, step_fraction

TARGET_SFT_REDUCTION = 0.15
TARGET_DPO_ACCURACY = 0.80
TARGET_PARITY_GAP = 0.01

UNCOMPRESSED = {"codec": "none", "small_tensor_codec": "none", "broadcast_codec": "none"}


@dataclass(frozen=True, kw_only=True)
class FinetuneBenchConfig:
    model: str = "smollm2-135m-instruct"
    num_clients: int = 2
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """Overrides for both jobs (on top of the demo's recipe and no compression)."""
    reference_threads: int = 1


QUICK = FinetuneBenchConfig(
    model="tiny-llama",
    hyperparameters={"num_rounds": 2, "inner_steps": 4, "batch_size": 4, "eval_examples": 16},
)


class Reference:
    """A job's model, data and objectives, rebuilt in this process as the swarm builds them."""

    def __init__(self, spec: JobSpec, catalog: ModelCatalog) -> None:
        base = catalog.resolve(spec.model, seed=spec.seed, chat=True)
        data = prepare_data(spec, base.tokenizer, base.config)
        self.spec = spec
        self.model = apply_adapter(base.model, spec.adapter_config(), seed=spec.seed)
        self.initial = trainable_state(self.model)
        vocab = base.config["vocab_size"]

        def objective(shard: bytes) -> Objective:
            return build_objective(
                spec.method, shard, vocab_size=vocab, seq_len=spec.seq_len, dpo_beta=spec.dpo_beta
            )

        self.shards = [objective(s) for s in data.shards]
        self.tokens_per_sample = data.num_tokens / max(1, sum(data.shard_samples))
        self.heldout = objective(data.heldout)
        # The whole training set as one shard, for the single-process AdamW baseline.
        (everything,) = prepare_data(
            replace(spec, num_shards=1), base.tokenizer, base.config
        ).shards
        self.everything = objective(everything)

    def evaluate(self, params: dict[str, torch.Tensor]) -> dict[str, float]:
        load_trainable_state(self.model, params)
        return self.heldout.evaluate(self.model, self.spec.eval_batch_size, self.spec.eval_examples)

    def replay(self, rounds: list[ReplayRound]) -> dict[str, float]:
        """The swarm's rounds in one process: the same tasks (seeds, shards, samples, steps),
        average and outer step."""
        spec = self.spec
        params, momentum = dict(self.initial), None
        for index, replayed in enumerate(rounds):
            tasks = replayed.tasks
            updates: list[dict[str, torch.Tensor]] = []
            weights: list[float] = []
            tokens: list[float] = []
            for task in tasks:
                load_trainable_state(self.model, params)
                config = spec.inner_loop(task.seed, steps=task.inner_steps)
                result = run_inner_loop(
                    self.model, self.shards[task.shard], config, samples=task.samples
                )
                updates.append(result.pseudo_gradient)
                tokens.append(float(result.tokens))
                weights.append(float(result.tokens) * staleness_weight(index - task.round))
            if not updates:  # the swarm republishes the version unchanged
                continue
            total = sum(tokens)  # late results are discounted, not renormalized
            average = {
                name: sum(u[name] * (w / total) for u, w in zip(updates, weights, strict=True))
                for name in params
            }
            fraction = step_fraction(
                spec,
                tokens=total,
                num_train_tasks=replayed.num_train_tasks,
                tokens_per_sample=self.tokens_per_sample,
            )
            params, momentum = nesterov_step(
                params,
                average,  # type: ignore[arg-type]
                momentum,
                lr=spec.outer_lr * fraction,
                momentum=spec.outer_momentum,
            )
        return self.evaluate(params)

    def plain_adamw(self, num_workers: int) -> dict[str, float]:
        """One AdamW run, no rounds: as many steps as a client takes, on batches as large as
        all clients' together."""
        spec = self.spec
        load_trainable_state(self.model, self.initial)
        steps = spec.num_rounds * spec.inner_steps
        config = spec.inner_loop(
            task_seed(spec.seed, 0, 0), steps=steps, batch_size=num_workers * spec.batch_size
        )
        run_inner_loop(self.model, self.everything, config)
        return self.evaluate(trainable_state(self.model))


@dataclass(frozen=True, kw_only=True)
class ReplayTask:
    """One train task the swarm applied: where it started and what it trained on."""

    round: int
    seed: int
    shard: int
    samples: list[int]
    inner_steps: int


@dataclass(frozen=True, kw_only=True)
class ReplayRound:
    tasks: list[ReplayTask]
    num_train_tasks: int


def applied_tasks(data_dir: Path, job_id: str, spec: JobSpec) -> list[ReplayRound]:
    """Per round, the train tasks whose results its outer step applied, read from the
    coordinator's database after the run."""
    db = Database(sqlite_url(data_dir))
    blobs = BlobStore(data_dir / "blobs")
    rounds: list[list[ReplayTask]] = [[] for _ in range(spec.num_rounds)]
    try:
        with db.transaction() as session:
            job = session.get_one(Job, job_id)
            sizes = dict(
                session.execute(
                    select(Round.index, Round.num_train_tasks).where(Round.job_id == job_id)
                ).all()
            )
            applied = session.scalars(
                select(Task)
                .where(Task.job_id == job_id, Task.applied_round.is_not(None))
                .order_by(Task.round_index, Task.index)
            )
            for task in applied:
                rows = spans.of_task(session, task.id)
                rounds[task.applied_round or 0].append(
                    ReplayTask(
                        round=task.round_index,
                        seed=task.seed,
                        shard=rows[0].shard,
                        samples=spans.indices(job, blobs, rows),
                        inner_steps=task.inner_steps or spec.inner_steps,
                    )
                )
    finally:
        db.dispose()
    return [
        ReplayRound(tasks=tasks, num_train_tasks=sizes.get(index) or len(tasks))
        for index, tasks in enumerate(rounds)
    ]


def run_bench(
    config: FinetuneBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    say = progress or (lambda _: None)
    began = time.monotonic()
    overrides = {**UNCOMPRESSED, **config.hyperparameters}
    with tempfile.TemporaryDirectory(prefix="swarm-bench-finetune-") as temp:
        work = Path(temp)
        say(f"the swarm: {config.num_clients} clients, SFT then DPO of {config.model}")
        demo_config = DemoConfig(
            num_clients=config.num_clients,
            model=config.model,
            hyperparameters=overrides,
            work_dir=work,
            num_samples=4,
        )
        demo = run_demo(demo_config, emit=say)
        if demo["status"] != "succeeded":
            raise RuntimeError(f"the swarm's jobs did not succeed: {demo['jobs']}")
        sft, dpo = demo["jobs"]
        say("single-process references of the SFT job (same seed, no compression)...")
        torch.set_num_threads(config.reference_threads)
        data_dir = work / "coordinator"
        catalog = ModelCatalog(data_dir / "models", BlobStore(data_dir / "blobs"))
        spec = JobSpec.from_dict(
            {"model": config.model, **recipe(demo_config, SFT_HYPERPARAMETERS)}
        )
        reference = Reference(spec, catalog)
        replayed = reference.replay(applied_tasks(data_dir, sft["job_id"], spec))
        say(f"  replayed rounds: held-out loss {replayed['loss']:.4f}")
        plain = reference.plain_adamw(config.num_clients)
        say(f"  plain AdamW: held-out loss {plain['loss']:.4f}")
    report = {
        "model": config.model,
        "num_clients": config.num_clients,
        "sft": {**sft, "spec": spec.to_dict()},
        "dpo": {**dpo, "hyperparameters": recipe(demo_config, DPO_HYPERPARAMETERS)},
        "reference": {"replayed_rounds": replayed, "plain_adamw": plain},
        "samples": demo["samples"],
        "wall_s": round(time.monotonic() - began, 1),
    }
    report["targets"] = check_targets(report)
    return report


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    sft, dpo = report["sft"], report["dpo"]
    swarm_loss = sft["final_eval_metrics"]["loss"]
    replayed = report["reference"]["replayed_rounds"]["loss"]
    gap = abs(swarm_loss - replayed) / replayed
    return [
        {
            "target": f"SFT lowers held-out loss by >= {TARGET_SFT_REDUCTION:.0%}",
            "value": round(sft["eval_loss_reduction"], 4),
            "met": sft["eval_loss_reduction"] >= TARGET_SFT_REDUCTION,
        },
        {
            "target": f"DPO held-out reward accuracy from ~50% to >= {TARGET_DPO_ACCURACY:.0%}",
            "value": {
                "before": dpo["initial_eval_metrics"]["reward_accuracy"],
                "after": dpo["final_eval_metrics"]["reward_accuracy"],
            },
            "met": dpo["final_eval_metrics"]["reward_accuracy"] >= TARGET_DPO_ACCURACY,
        },
        {
            "target": f"swarm SFT within {TARGET_PARITY_GAP:.0%} of the single-process run",
            "value": round(gap, 6),
            "met": gap <= TARGET_PARITY_GAP,
        },
    ]


def render_tables(report: dict[str, Any]) -> str:
    lines = [
        f"swarm bench finetune: {report['model']}, {report['num_clients']} clients, "
        f"{report['wall_s']:.0f}s",
        "",
        f"{'job':<4} {'held-out metric':<16} {'before':>9} {'after':>9}   {'up':>8} {'down':>9}",
    ]
    for name in ("sft", "dpo"):
        job = report[name]
        before, after = job["initial_eval_metrics"], job["final_eval_metrics"]
        for i, key in enumerate(k for k in before if k != "examples"):
            traffic = (
                f"   {job['bytes_up'] / 1e6:>6.1f}MB {job['bytes_down'] / 1e6:>7.1f}MB"
                if i == 0
                else ""
            )
            lines.append(
                f"{name if i == 0 else '':<4} {key:<16} {before[key]:>9.4f} {after[key]:>9.4f}"
                + traffic
            )
    reference = report["reference"]
    lines += [
        "",
        "SFT held-out loss after training, swarm vs single process:",
        "  swarm (client processes, gRPC, database)  "
        f"{report['sft']['final_eval_metrics']['loss']:.4f}",
        f"  the same rounds replayed in one process   {reference['replayed_rounds']['loss']:.4f}",
        f"  plain AdamW, same steps and tokens        {reference['plain_adamw']['loss']:.4f}",
        "",
        f"{'target':<56} {'value':<34} met",
    ]
    for target in report["targets"]:
        value = target["value"]
        if isinstance(value, dict):
            value = f"{value['before']:.4f} -> {value['after']:.4f}"
        lines.append(f"{target['target']:<56} {value!s:<34} {target['met']}")
    return "\n".join(lines)
