"""What a job trains: LoRA adapters (through peft) or every weight of the model.

With LoRA the base weights are frozen and only the low-rank matrices are trainable, so only they
travel between coordinator and workers. Adapter matrices are initialised from a seed, so the
coordinator's initial version is reproducible; workers then receive it like any version.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from swarm.protocol.errors import ConfigError

if TYPE_CHECKING:
    from peft import PeftModel

# peft is imported only when a job uses LoRA: it takes seconds to import, and a volunteer's
# client should start in less.

ADAPTER_KINDS = ("lora", "full")
ALL_LINEAR = "all-linear"


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """Attributes:
    kind: `lora` (train low-rank adapters on frozen weights) or `full` (train every weight).
    rank: LoRA rank r.
    alpha: LoRA scaling numerator (the update is scaled by alpha / r).
    dropout: dropout on the adapters' input during training.
    target_modules: module names to adapt; empty means every linear layer but the output head.
    """

    kind: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ConfigError(
                f"adapter must be one of {', '.join(ADAPTER_KINDS)}; got {self.kind!r}"
            )
        if (
            isinstance(self.rank, bool)
            or not isinstance(self.rank, int)
            or not 1 <= self.rank <= 4096
        ):
            raise ConfigError(f"lora_rank must be a whole number in [1, 4096], got {self.rank!r}")
        if not (0.0 < self.alpha <= 1e6) or math.isnan(self.alpha):
            raise ConfigError(f"lora_alpha must be in (0, 1e6], got {self.alpha!r}")
        if not (0.0 <= self.dropout < 1.0):
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.dropout!r}")
        for name in self.target_modules:
            if not name or not all(c.isalnum() or c in "_.-" for c in name) or len(name) > 128:
                raise ConfigError(f"lora target module {name!r:.80} is not a module name")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": list(self.target_modules),
        }


def apply_adapter(model: torch.nn.Module, adapter: AdapterConfig, seed: int = 0) -> torch.nn.Module:
    """Make `model` train what `adapter` says: LoRA on frozen weights, or every weight."""
    if adapter.kind == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,  # type: ignore[arg-type]  # peft annotates int, takes float
        lora_dropout=adapter.dropout,
        target_modules=list(adapter.target_modules) or ALL_LINEAR,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, config)  # type: ignore[arg-type]
        except ValueError as exc:  # e.g. a target module this architecture does not have
            raise ConfigError(f"cannot apply LoRA to this model: {exc}") from None


def is_lora(model: torch.nn.Module) -> bool:
    # A model can only be a PeftModel once peft is imported, so there is no need to import it.
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def merged_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model with adapters folded into its weights."""
    if is_lora(model):
        lora: PeftModel = model  # type: ignore[assignment]
        return lora.merge_and_unload()  # type: ignore[no-any-return]
    return model
