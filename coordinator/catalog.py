"""The models this coordinator serves: pulled snapshots, presets, and fine-tuned results.

A snapshot is a Hugging Face folder whose files live in the blob store, content-addressed;
`<data_dir>/models/<name>/` keeps a manifest and, under `files/`, links to those blobs, so
transformers loads the folder as it is and workers download the weight shards by digest.
Fine-tuned results become snapshots too (named by their job id), so a DPO job can start from
the model an SFT job produced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from swarm.coordinator.blobs import BlobStore
from swarm.models import PRESETS, state_to_bytes
from swarm.models.chat import byte_chat_tokenizer
from swarm.models.sources import (
    CATALOG,
    LoadedModel,
    gguf_in_package,
    load_folder,
    load_preset,
    load_source,
    load_tokenizer,
    preset_model_config,
    save_folder,
    unique_state,
)
from swarm.protocol.errors import ConfigError, NotFoundError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True, kw_only=True)
class BaseModel:
    """A job's starting model and where workers find its weights."""

    name: str
    config: dict[str, Any]
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    weight_sha256s: list[str]
    unstored: dict[str, bytes] = field(default_factory=dict)
    """Weight blobs not in the store yet (a preset's), by digest: `store` puts them there."""

    def store(self, blobs: BlobStore) -> None:
        for data in self.unstored.values():
            blobs.put_bytes(data)


class ModelCatalog:
    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root = root
        self._blobs = blobs

    def pull(self, name: str, alias: str | None = None) -> dict[str, Any]:
        """Load `name` (see `swarm.models.sources`) and store it as a snapshot (as `alias`)."""
        if name in PRESETS:
            raise ConfigError(f"{name} is a random-init preset: jobs build it, nothing to pull")
        if alias is not None:
            _check_name(alias)
        began = time.monotonic()
        loaded = load_source(name)
        if alias is not None or not _is_plain_name(loaded.name):
            loaded = replace(loaded, name=alias or _plain(loaded.name))
        manifest = self.add(loaded)
        logger.info(
            "pulled %s (%s, %s parameters) in %.1fs",
            loaded.name,
            loaded.source,
            f"{manifest['num_parameters']:,}",
            time.monotonic() - began,
        )
        return manifest

    def add(self, loaded: LoadedModel) -> dict[str, Any]:
        """Store a loaded model as the snapshot `loaded.name`, replacing any older one."""
        _check_name(loaded.name)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".pull-"))
        try:
            save_folder(loaded, staging / "files")
            files = self._blobs.put_folder(staging / "files", link=True)
            manifest = {
                "name": loaded.name,
                "source": loaded.source,
                "model_type": loaded.config["model_type"],
                "config": loaded.config,
                "files": files,
                "num_parameters": sum(t.numel() for t in unique_state(loaded.model).values()),
                "created_at": time.time(),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            target = self.root / loaded.name
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
            return manifest
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def manifest(self, name: str) -> dict[str, Any] | None:
        _check_name(name, storing=False)
        try:
            return json.loads((self.root / name / MANIFEST).read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the snapshot of {name} is damaged ({exc}); pull it again") from None

    def list(self) -> list[dict[str, Any]]:
        """Every model a job can name: pulled snapshots, pullable catalog entries, presets."""
        rows: dict[str, dict[str, Any]] = {}
        if self.root.is_dir():
            for directory in sorted(p for p in self.root.iterdir() if not p.name.startswith(".")):
                manifest = self.manifest(directory.name)
                if manifest is not None:
                    rows[directory.name] = {
                        "name": directory.name,
                        "status": "ready",
                        "family": manifest["model_type"],
                        "num_parameters": manifest["num_parameters"],
                        "source": manifest["source"],
                        "created_at": manifest["created_at"],
                    }
        for name, entry in CATALOG.items():
            if name not in rows:
                offline = gguf_in_package(entry) is not None
                rows[name] = {
                    "name": name,
                    "status": "pullable" if offline else "pullable-online",
                    "family": None,
                    "num_parameters": None,
                    "source": f"pypi:{entry.pypi_package}" if offline else f"hub:{entry.hub_repo}",
                    "description": entry.description,
                }
        for name, config in PRESETS.items():
            rows[name] = {
                "name": name,
                "status": "ready",
                "family": config["model_type"],
                "num_parameters": None,
                "source": "preset (random init)",
            }
        return list(rows.values())

    def config(self, name: str, *, chat: bool) -> dict[str, Any]:
        """The config dict of a preset (as a chat job builds it, with `chat`) or of a stored
        snapshot, without loading any weights."""
        if name in PRESETS:
            return preset_model_config(name, chat)
        self.require(name)
        manifest = self.manifest(name)
        assert manifest is not None
        return dict(manifest["config"])

    def tokenizer(self, name: str) -> PreTrainedTokenizerBase:
        """The tokenizer of a preset or a stored snapshot, without loading its weights."""
        if name in PRESETS:
            return byte_chat_tokenizer()
        if self.manifest(name) is None:
            raise NotFoundError(f"no snapshot of model {name!r}")
        return load_tokenizer(self.root / name / "files")

    def require(self, name: str) -> None:
        """Raise `ConfigError` unless `name` is a preset or a stored snapshot (cheap: no load)."""
        if name in PRESETS or (_is_plain_name(name) and self.manifest(name) is not None):
            return
        if name in CATALOG:
            raise ConfigError(
                f"model {name} is not pulled yet; run: swarm models pull {name}", param="model"
            )
        raise ConfigError(
            f"unknown model {name!r:.80}; `swarm models list` shows the models this "
            "coordinator serves, and `swarm models pull NAME` adds one",
            param="model",
        )

    def resolve(self, name: str, *, seed: int, chat: bool) -> BaseModel:
        """The base model a job named and the blobs of its weights, for workers.

        A preset is built from its seed; its weights reach the store only through
        `BaseModel.store`, once the job is known to be valid.
        """
        if name in PRESETS:
            loaded = load_preset(name, seed=seed, chat=chat)
            data = state_to_bytes(unique_state(loaded.model))
            sha256 = hashlib.sha256(data).hexdigest()
            return BaseModel(
                name=name,
                config=loaded.config,
                model=loaded.model,
                tokenizer=loaded.tokenizer,
                weight_sha256s=[sha256],
                unstored={sha256: data},
            )
        self.require(name)
        manifest = self.manifest(name)
        assert manifest is not None
        loaded = load_folder(self.root / name / "files", name=name, source=manifest["source"])
        return BaseModel(
            name=name,
            config=manifest["config"],
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            weight_sha256s=[
                sha
                for path, sha in sorted(manifest["files"].items())
                if path.endswith(".safetensors")
            ],
        )


def _plain(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)[:128].lstrip(".")


def _is_plain_name(name: str) -> bool:
    return bool(name) and len(name) <= 128 and all(c.isalnum() or c in "._-" for c in name)


def _check_name(name: str, *, storing: bool = True) -> None:
    if not _is_plain_name(name) or name.startswith("."):
        raise ConfigError(
            f"model name {name!r:.80} must be letters, digits, '.', '_' or '-' (at most 128)"
        )
    if storing and name in PRESETS:
        raise ConfigError(f"{name} is the name of a preset; store the model under another (--as)")
