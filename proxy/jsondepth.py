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

# orjson writes at most this many levels ("Recursion limit reached" past it).
WRITABLE_DEPTH = 254
# Levels a translation may add around what it parsed: a Messages tool input is written 3 deep in
# its message (message, content, block), a Responses function's parameters one deeper in chat's
# tools than in the Responses request. Checking the value alone let such JSON through, and the
# write after the translation failed (a 500).
MARGIN = 16
# What is accepted where JSON is parsed: deeper is refused there.
ACCEPTED_DEPTH = WRITABLE_DEPTH - MARGIN
TOO_DEEP = f"nested more than {ACCEPTED_DEPTH} levels deep"  # for the error messages
# JSON this short cannot be nested deeper than accepted (see ``writable``): a caller on a hot
# path may skip the call for it.
SHORT = 2 * ACCEPTED_DEPTH


def writable(raw: bytes, value: Any) -> bool:
    """Can ``value``, parsed from ``raw``, be written back as JSON, even ``MARGIN`` levels deep
    inside something else? Ordinary JSON is told at memory speed: a short text or one with few
    brackets cannot be that deep (parsed JSON that deep has that many closing brackets too, so
    it is longer than twice the depth; most stream chunks are shorter, and this runs on every
    one). Only JSON with more brackets than ``ACCEPTED_DEPTH`` is written once to find out."""
    if len(raw) <= SHORT or raw.count(b"[") + raw.count(b"{") <= ACCEPTED_DEPTH:
        return True
    for _ in range(MARGIN):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True
