"""The echo model's embeddings: for each input, a deterministic unit vector of
``embedding_dimensions`` numbers (or the request's ``dimensions``), derived from a hash of the
input. The same input always gives the same vector, different inputs unrelated ones; the
numbers are float32 values, so ``float`` and ``base64`` answers decode to the same vector."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

import orjson

from proxy.errors import InvalidRequest
from proxy.settings import EchoUpstream
from proxy.upstreams.base import Call, Reply, Route
from proxy.upstreams.echo.chat import split_pieces

MAX_DIMENSIONS = 8192  # as embedding_dimensions allows


async def embeddings(config: EchoUpstream, call: Call, route: Route) -> Reply:
    """One embedding per input, at once."""
    inputs = _inputs(call.body["input"])
    size = call.body.get("dimensions") or config.embedding_dimensions
    if size > MAX_DIMENSIONS:  # a vector is built in memory: bounded like the setting
        raise InvalidRequest(
            f"Invalid value for 'dimensions': the echo model makes at most {MAX_DIMENSIONS}.",
            param="dimensions",
            code="invalid_value",
        )
    encode = call.body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        numbers = vector(item, size)
        embedding: Any = _base64(numbers) if encode else numbers
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(
        len(item) if isinstance(item, list) else len(split_pieces(item, config.chunk))
        for item in inputs
    )
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    answer = {"object": "list", "data": data, "model": route.upstream_model, "usage": usage}
    return Reply(completion=answer)


def vector(item: str | list[int], size: int) -> list[float]:
    """A unit vector from the hash of ``item`` (a text or token ids), float32-exact."""
    seed = orjson.dumps(item)  # "hi" and [104, 105] hash apart
    raw = b"".join(
        hashlib.blake2b(seed, digest_size=64, salt=block.to_bytes(16, "little")).digest()
        for block in range(-(-size * 4 // 64))
    )
    numbers = [value / 2**31 - 1.0 for value in struct.unpack(f"<{size}I", raw[: size * 4])]
    norm = math.sqrt(sum(n * n for n in numbers)) or 1.0
    packed = struct.pack(f"<{size}f", *(n / norm for n in numbers))
    return list(struct.unpack(f"<{size}f", packed))


def _base64(numbers: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(numbers)}f", *numbers)).decode()


def _inputs(value: Any) -> list[str | list[int]]:
    """The inputs of a (validated) request: one text, texts, token ids, lists of token ids."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(token, int) for token in value):
        return [value]
    return list(value)
