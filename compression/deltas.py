"""Version deltas for the broadcast: send what changed since the version a worker holds.

The coordinator encodes `target - base` with the broadcast policy and publishes `base + decoded`
as the version workers train from, so the error of a lossy delta never accumulates: the next
delta starts from what workers actually hold, and the difference between the coordinator's own
parameters and the broadcast ones is the coordinator's residual, carried into the next delta.
Both sides rebuild a version with `apply_delta`, the same float32 additions in the same order,
so a worker's copy is bit-identical to the coordinator's and can be checked by its digest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

import torch

from swarm.compression.payload import encode_payload, iter_payload
from swarm.compression.policy import CompressionPolicy


def make_delta(
    base: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    policy: CompressionPolicy,
    *,
    seed: int = 0,
) -> tuple[bytes, dict[str, torch.Tensor]]:
    """Encode `target - base`; return the payload and what a receiver rebuilds from it."""
    payload = encode_payload({n: target[n] - base[n] for n in target}, policy, seed=seed)
    return payload, apply_delta(base, payload, policy)


def apply_delta(
    base: Mapping[str, torch.Tensor], delta: bytes | BinaryIO, policy: CompressionPolicy
) -> dict[str, torch.Tensor]:
    """`base` plus the decoded delta (raises `CompressionError` if the delta is not for `base`)."""
    shapes = {name: tuple(t.shape) for name, t in base.items()}
    return {name: base[name] + change for name, change in iter_payload(delta, shapes, policy)}
