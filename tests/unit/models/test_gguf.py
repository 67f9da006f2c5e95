"""GGUF files that are not a supported model are refused by name, before any weight is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from swarm.models.sources import load_source
from swarm.protocol.errors import ConfigError

gguf = pytest.importorskip("gguf")


def _write_gguf(path: Path, architecture: str) -> Path:
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_of_an_unsupported_architecture_is_refused_by_name(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "encoder.gguf", "bert")
    with pytest.raises(ConfigError, match=r"encoder\.gguf .*architecture bert is not supported"):
        load_source(str(path))


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"definitely not GGUF")
    with pytest.raises(ConfigError, match="not a GGUF model"):
        load_source(str(path))
