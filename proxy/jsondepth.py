"""JSON the proxy can write back out.

orjson reads JSON nested up to 1,024 levels deep but writes at most 254 ("Recursion limit
reached"). Whatever the proxy parses it may have to write again: a client's body (to the
upstream, or echoed in a Responses object, a Messages tool input turned into chat arguments) and
an upstream's answer (each chunk, the whole JSON). Parsed but unwritable, such JSON was a 500
with a traceback wherever it was written; refused where it is parsed, it is the sender's error:
a client's 400, an upstream's malformed answer.
"""

from __future__ import annotations

from typing import Any

import orjson

# A value nested deeper than this cannot be written: it has more opening brackets than this.
WRITABLE_DEPTH = 254
TOO_DEEP = f"nested more than {WRITABLE_DEPTH} levels deep"  # for the error messages


def writable(raw: bytes, value: Any) -> bool:
    """Can ``value``, parsed from ``raw``, be written back as JSON? Ordinary JSON is told at
    memory speed (too few brackets to be that deep); only JSON with more than
    ``WRITABLE_DEPTH`` brackets is written once to find out."""
    # Parsed JSON that deep has that many closing brackets too: a short text cannot be (most
    # stream chunks are shorter, and this runs on every one of them).
    if len(raw) <= 2 * WRITABLE_DEPTH or raw.count(b"[") + raw.count(b"{") <= WRITABLE_DEPTH:
        return True
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True
