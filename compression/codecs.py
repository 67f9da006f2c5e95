"""Tensor codecs: how one tensor becomes bytes on the wire and back.

A codec is a named, stateless pair of functions with a declared worst-case relative error, so a
reader of a payload header knows what precision the sender chose. The compression issue adds
quantizing and sparsifying codecs with error feedback behind the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from swarm.protocol.errors import CompressionError


@dataclass(frozen=True, kw_only=True)
class Codec:
    """A lossless or lossy element-wise cast, described by name.

    Attributes:
        name: the name a job's configuration and a payload header use.
        wire_dtype: the numpy dtype of the encoded elements.
        relative_error: worst-case relative error per element for values in range.
    """

    name: str
    wire_dtype: str
    relative_error: float

    def encode(self, tensor: torch.Tensor) -> bytes:
        """Encode a float tensor as little-endian elements of `wire_dtype`."""
        array = tensor.detach().to(torch.float32).cpu().contiguous().numpy()
        if self.wire_dtype == "float16":
            limit = float(np.finfo(np.float16).max)
            if array.size and float(np.abs(array).max()) > limit:
                raise CompressionError(
                    f"{self.name}: a value exceeds the float16 range (+-{limit}); "
                    "use the 'none' codec for this job"
                )
        return array.astype(np.dtype(self.wire_dtype).newbyteorder("<"), copy=False).tobytes()

    def decode(self, data: bytes, shape: tuple[int, ...]) -> torch.Tensor:
        """Decode bytes made by `encode` into a float32 tensor of `shape`."""
        dtype = np.dtype(self.wire_dtype).newbyteorder("<")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise CompressionError(
                f"{self.name}: {len(data)} bytes cannot hold shape {list(shape)} "
                f"({expected} bytes expected)"
            )
        array = np.frombuffer(data, dtype=dtype).astype(np.float32).reshape(shape)
        return torch.from_numpy(array)

    def encoded_size(self, num_elements: int) -> int:
        """Bytes `encode` produces for a tensor of `num_elements` elements."""
        return num_elements * np.dtype(self.wire_dtype).itemsize


CODECS: dict[str, Codec] = {
    "none": Codec(name="none", wire_dtype="float32", relative_error=0.0),
    "fp16": Codec(name="fp16", wire_dtype="float16", relative_error=2.0**-11),
}


def get_codec(name: str) -> Codec:
    """Look a codec up by name, with an error that lists the known ones."""
    try:
        return CODECS[name]
    except KeyError:
        raise CompressionError(
            f"unknown codec {name!r}; choose one of {', '.join(sorted(CODECS))}"
        ) from None
