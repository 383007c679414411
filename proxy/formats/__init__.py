"""Translations between chat completions and the other wire formats the proxy serves.

Each module here is pure: request bodies, chunks and events in, request bodies, chunks and
events out. No I/O, no state at import time; the endpoints own the HTTP, the SSE framing,
keepalives and routing.
"""
