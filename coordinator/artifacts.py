"""A finished job's results: the LoRA adapter in PEFT format and the merged model.

Both are safetensors folders whose files go into the blob store. The merged model is also
added to the model catalog under the job's id, so a later job (DPO after SFT) can start from it
and `GET /v1/models` lists it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.storage import Job
from swarm.models import (
    apply_adapter,
    build_model,
    config_from_bytes,
    is_lora,
    load_trainable_state,
    merged_model,
)
from swarm.models.sources import LoadedModel, load_weights, model_config_dict
from swarm.scheduler import JobSpec

ARTIFACT_KINDS = ("adapter", "merged")


def rebuild_model(job: Job, params: dict[str, torch.Tensor], blobs: BlobStore) -> torch.nn.Module:
    """The job's model at `params`, built from its stored blobs exactly as workers build it."""
    spec = JobSpec(**job.spec)
    model = build_model(config_from_bytes(blobs.read(job.model_config_sha256)))
    if job.base_sha256s:
        load_weights(model, [blobs.path(sha) for sha in job.base_sha256s])
    model = apply_adapter(model, spec.adapter_config(), seed=spec.seed)
    load_trainable_state(model, params)
    return model


def build_artifacts(
    job: Job, params: dict[str, torch.Tensor], blobs: BlobStore, catalog: ModelCatalog
) -> dict[str, Any]:
    """Store the adapter (LoRA jobs) and the merged model; kind -> {"files": {path: sha256}}."""
    spec = JobSpec(**job.spec)
    model = rebuild_model(job, params, blobs)
    artifacts: dict[str, Any] = {}
    if is_lora(model):
        with tempfile.TemporaryDirectory() as temp:
            model.save_pretrained(temp, safe_serialization=True)  # type: ignore[operator]
            artifacts["adapter"] = {"files": blobs.put_folder(Path(temp)), "base": spec.model}
    manifest = _add_merged(job, model, catalog, name=job.id)
    artifacts["merged"] = {"files": manifest["files"], "model": job.id}
    return artifacts


def store_merged(
    job: Job,
    params: dict[str, torch.Tensor],
    blobs: BlobStore,
    catalog: ModelCatalog,
    *,
    name: str,
) -> dict[str, Any]:
    """Add the job's model at `params`, merged, to the catalog as `name` (a checkpoint)."""
    return _add_merged(job, rebuild_model(job, params, blobs), catalog, name=name)


def _add_merged(
    job: Job, model: torch.nn.Module, catalog: ModelCatalog, *, name: str
) -> dict[str, Any]:
    spec = JobSpec(**job.spec)
    merged = merged_model(model)
    return catalog.add(
        LoadedModel(
            name=name,
            source=f"job:{job.id}",
            config=model_config_dict(merged),  # type: ignore[arg-type]
            model=merged,  # type: ignore[arg-type]
            tokenizer=catalog.tokenizer(spec.model),
        )
    )
