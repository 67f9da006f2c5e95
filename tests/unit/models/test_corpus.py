"""Built-in datasets that ship with the package."""

from __future__ import annotations

import pytest

from swarm.models import decode_tokens, encode_text, load_builtin_text
from swarm.protocol.errors import ConfigError


def test_tiny_corpus_is_bundled_and_large_enough_for_the_demo() -> None:
    text = load_builtin_text("builtin:tiny_corpus")
    assert isinstance(text, str)
    assert len(text.encode("utf-8")) > 50_000
    assert len(set(text)) > 20


def test_tiny_corpus_survives_byte_level_tokenization() -> None:
    text = load_builtin_text("builtin:tiny_corpus")
    tokens = encode_text(text)
    assert len(tokens) == len(text.encode("utf-8"))
    assert decode_tokens(tokens) == text


@pytest.mark.parametrize(
    "dataset",
    ["builtin:nope", "tiny_corpus", "file:tiny_corpus", "", "builtin:", "BUILTIN:tiny_corpus"],
)
def test_unknown_datasets_are_refused_listing_the_known_ones(dataset: str) -> None:
    with pytest.raises(ConfigError, match=r"known: builtin:smol_instruct, .*builtin:tiny_corpus"):
        load_builtin_text(dataset)
