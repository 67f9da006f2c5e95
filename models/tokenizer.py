"""The byte-level tokenizer of the tiny presets: one token per UTF-8 byte, vocabulary 256.

It needs no files and no downloads, so the demo and the tests run offline on any machine.
"""

from __future__ import annotations

import numpy as np

VOCAB_SIZE = 256


def encode_text(text: str) -> np.ndarray:
    """Token ids (int32) of `text`."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)


def decode_tokens(tokens: np.ndarray) -> str:
    """Text of byte-level token ids; invalid UTF-8 is replaced."""
    return bytes(np.asarray(tokens, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")
