"""PowerSGD: a rank-r approximation of a matrix from one warm-started power iteration.

For a tensor viewed as an (rows x cols) matrix M, with Q (cols x r) from the previous call on
the same tensor (the warm start, kept in the tensor's codec state) or seeded at random the
first time:

    P = orthonormalize(M Q);  Q' = M^T P;  send P and Q';  M ~ P Q'^T = P P^T M

P P^T M is a projection of M, so the error never exceeds ||M||; with error feedback the part it
misses is sent in later rounds. Q' becomes the next warm start (Vogels et al., 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from swarm.compression.stages import Buffer, Meta, RestBound, TensorState, TransformStage, meta_int
from swarm.protocol.errors import CompressionError


def matrix_dims(shape: tuple[int, ...], numel: int) -> tuple[int, int]:
    """The matrix a tensor is viewed as: first dimension by the rest; a vector is one row."""
    if len(shape) >= 2 and shape[0] > 0:
        return shape[0], numel // shape[0]
    return 1, numel


@dataclass(frozen=True)
class PowerSGD(TransformStage):
    """Low-rank compression of matrices with a warm-started power iteration."""

    name: ClassVar[str] = "powersgd"
    elementwise: ClassVar[bool] = False
    rank: int = 4

    def __post_init__(self) -> None:
        if (
            isinstance(self.rank, bool)
            or not isinstance(self.rank, int)
            or not 1 <= self.rank <= 1024
        ):
            raise CompressionError(f"powersgd: rank must be in [1, 1024], got {self.rank!r}")

    def spec(self) -> str:
        return f"powersgd:rank={self.rank}"

    def _rank(self, rows: int, cols: int) -> int:
        return min(self.rank, rows, cols)

    def _factors(
        self, x: torch.Tensor, shape: tuple[int, ...], seed: int, state: TensorState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = matrix_dims(shape, x.numel())
        rank = self._rank(rows, cols)
        matrix = x.view(rows, cols)
        q = state.get("powersgd_q")
        if q is None or tuple(q.shape) != (cols, rank):
            q = torch.randn(cols, rank, generator=torch.Generator().manual_seed(seed))
        p = torch.linalg.qr(matrix @ q).Q
        return p, matrix.T @ p

    def encode(
        self, x: torch.Tensor, shape: tuple[int, ...], seed: int, state: TensorState
    ) -> tuple[torch.Tensor, list[Buffer], Meta]:
        rows, cols = matrix_dims(shape, x.numel())
        p, q = self._factors(x, shape, seed, state)
        # A zero Q would stall the power iteration forever; start afresh next time instead.
        if torch.count_nonzero(q):
            state["powersgd_q"] = q.contiguous()
        else:
            state.pop("powersgd_q", None)
        inner = torch.cat([p.reshape(-1), q.reshape(-1)])
        return inner, [], {"rank": self._rank(rows, cols)}

    def inner_numel(self, numel: int, shape: tuple[int, ...], meta: Meta) -> int:
        rows, cols = matrix_dims(shape, numel)
        rank = meta_int(meta, "rank", 0, self._rank(rows, cols), stage=self.spec())
        if numel and rank != self._rank(rows, cols):
            raise CompressionError(f"{self.spec()}: rank {rank} != {self._rank(rows, cols)}")
        return rank * (rows + cols) if numel else 0

    def decode(
        self,
        inner: torch.Tensor,
        parts: list[Buffer],
        numel: int,
        shape: tuple[int, ...],
        meta: Meta,
    ) -> torch.Tensor:
        if not numel:
            return torch.zeros(0)
        rows, cols = matrix_dims(shape, numel)
        rank = meta["rank"]
        p = inner[: rows * rank].view(rows, rank)
        q = inner[rows * rank :].view(cols, rank)
        return (p @ q.T).reshape(-1)

    def error_bound(
        self,
        x: torch.Tensor,
        shape: tuple[int, ...],
        seed: int,
        state: TensorState,
        rest: RestBound,
    ) -> float:
        if not x.numel():
            return 0.0
        p, q = self._factors(x, shape, seed, dict(state))
        inner = torch.cat([p.reshape(-1), q.reshape(-1)])
        # With e = ||[P^;Q^] - [P;Q]||:
        # ||P^Q^T - PQ^T|| <= e ||Q^|| + ||P|| e <= e (||Q|| + e + ||P||).
        e = rest(inner)
        norm_p = float(torch.linalg.vector_norm(p.double()))
        norm_q = float(torch.linalg.vector_norm(q.double()))
        projection = float(torch.linalg.vector_norm(x.double()))
        return projection + e * (norm_q + e + norm_p)

    def max_inner_numel(self, numel: int, shape: tuple[int, ...]) -> int:
        rows, cols = matrix_dims(shape, numel)
        return self._rank(rows, cols) * (rows + cols) if numel else 0

    def max_part_bytes(self, numel: int, shape: tuple[int, ...]) -> int:
        return 0
