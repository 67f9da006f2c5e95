"""Codecs for updates and activations, and the self-describing wire payload that carries them."""

from swarm.compression.codecs import CODECS, Codec, get_codec
from swarm.compression.payload import (
    decode_payload,
    encode_payload,
    payload_size_bound,
    read_header,
)

__all__ = [
    "CODECS",
    "Codec",
    "decode_payload",
    "encode_payload",
    "get_codec",
    "payload_size_bound",
    "read_header",
]
