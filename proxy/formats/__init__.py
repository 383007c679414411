"""Client wire formats: what the relay writes for each API, and the translations between APIs.

Each API has a format object with ``stream`` (a class: one instance per streamed request, the
``relay.StreamFormat`` protocol), ``complete`` (the one JSON answer of a non-stream request)
and ``error_body`` (an error in that API's shape).
"""
