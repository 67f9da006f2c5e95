"""Error feedback: what a biased codec left out is added to the next update it encodes.

A worker keeps one `ErrorFeedback` per job. Encoding an update adds the residual, and the new
residual (what was meant minus what the receiver will decode) is *staged*; the caller commits it
once the coordinator accepted the result, or discards it when the result was refused, so a
refused update is neither lost twice nor counted twice. Codec state such as PowerSGD's warm start
lives here too. `to_bytes`/`from_bytes` let the worker keep it on disk across restarts
(Karimireddy et al., 2019: any biased compressor with error feedback converges like SGD).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from swarm.compression.stages import TensorState
from swarm.protocol.errors import CompressionError

_SEPARATOR = "::"


class ErrorFeedback:
    """Residuals and codec state, by tensor name."""

    def __init__(self) -> None:
        self._residuals: dict[str, torch.Tensor] = {}
        self._states: dict[str, TensorState] = {}
        self._staged: tuple[dict[str, torch.Tensor], dict[str, TensorState]] | None = None

    def __len__(self) -> int:
        return len(self._residuals)

    def residual(self, name: str) -> torch.Tensor | None:
        return self._residuals.get(name)

    def compensate(self, name: str, update: torch.Tensor) -> torch.Tensor:
        """The update plus the residual left over for this tensor (a new tensor)."""
        update = update.detach().to(torch.float32)
        residual = self._residuals.get(name)
        if residual is None or residual.shape != update.shape:
            return update.clone()
        return update + residual

    def working_state(self, name: str) -> TensorState:
        """A copy of the tensor's codec state for an encoder to update."""
        return dict(self._states.get(name, {}))

    def stage(
        self,
        residuals: Mapping[str, torch.Tensor],
        states: Mapping[str, TensorState],
    ) -> None:
        """Hold the residuals and states of one encoded update until `commit` or `discard`."""
        self._staged = (dict(residuals), {k: dict(v) for k, v in states.items()})

    def commit(self) -> None:
        if self._staged is not None:
            residuals, states = self._staged
            self._residuals.update(residuals)
            self._states.update(states)
            self._staged = None

    def discard(self) -> None:
        self._staged = None

    def clear(self) -> None:
        """Forget every residual and codec state (after they went bad, or a policy change)."""
        self._residuals.clear()
        self._states.clear()
        self._staged = None

    def norm(self) -> float:
        """The L2 norm of all residuals (for logs and tests)."""
        total = sum(float(r.double().pow(2).sum()) for r in self._residuals.values())
        return total**0.5

    def to_bytes(self) -> bytes:
        tensors = {f"residual{_SEPARATOR}{k}": v.contiguous() for k, v in self._residuals.items()}
        for name, state in self._states.items():
            for key, value in state.items():
                tensors[f"state{_SEPARATOR}{name}{_SEPARATOR}{key}"] = value.contiguous()
        return save_safetensors(tensors, metadata={"format": "swarm-error-feedback-1"})

    @classmethod
    def from_bytes(cls, data: bytes) -> ErrorFeedback:
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CompressionError(f"error feedback state is corrupt: {exc}") from None
        feedback = cls()
        for key, value in tensors.items():
            kind, _, rest = key.partition(_SEPARATOR)
            if kind == "residual":
                feedback._residuals[rest] = value.to(torch.float32)
            elif kind == "state":
                name, _, state_key = rest.rpartition(_SEPARATOR)
                feedback._states.setdefault(name, {})[state_key] = value.to(torch.float32)
            else:
                raise CompressionError(f"error feedback state has an unknown entry {key!r}")
        return feedback
