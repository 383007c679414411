"""Client wire formats: what the relay writes for each API, and the translations between APIs.

Each API has a format object (``relay.Format``): its keepalive ``ping``, ``exchange`` (how one
attempt talks to an upstream: passed through, or translated), ``error_body`` and
``error_event`` (an error in that API's shape). The translation packages (``anthropic``) are
pure: request bodies, chunks and events in, request bodies, chunks and events out; no I/O, no
state at import time.
"""
