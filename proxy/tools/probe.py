"""``chat-stream-proxy probe``: is this endpoint really streaming, as this client sees it?

Sends one streaming request (chat completions, or Responses with ``--api responses``:
``tools.probe_apis``) to any OpenAI-compatible endpoint with the chosen client, prints every
line with its arrival time, and judges:

- TRUE STREAMING (exit 0): the content arrived spread over the answer's time;
- PSEUDO-STREAMING (exit 1): it was SSE, but (nearly) everything arrived at once at the end:
  a buffering client, hop or server;
- NOT STREAMING (exit 2): the server answered plain JSON, not an event stream;
- INCONCLUSIVE (exit 3): fewer than two content chunks, nothing to compare;
- exit 4: the request failed (connection refused, HTTP error), or the chosen client's library
  is not installed (``openai`` and ``requests`` come with the ``probe`` extra).
"""

from __future__ import annotations

import http.client
import importlib.util
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

from proxy.tools.probe_apis import APIS, DEFAULT_API, Api

CLIENTS = ("httpx", "raw", "openai", "requests", "requests-buffered")
DEFAULT_CLIENT = "httpx"  # a plain `pip install` has httpx; openai and requests are extras
# The clients that need a library a plain install does not bring, and that library.
OPTIONAL = {"openai": "openai", "requests": "requests", "requests-buffered": "requests"}
INSTALL_HINT = "pip install 'chat-stream-proxy[probe]'"
LATE = 0.05  # "the end": the last 5% of the time
PSEUDO_SHARE = 0.5  # at least this share of the content arrived in it: pseudo-streaming

EXIT = {"TRUE STREAMING": 0, "PSEUDO-STREAMING": 1, "NOT STREAMING": 2, "INCONCLUSIVE": 3}


@dataclass
class Arrival:
    at: float  # seconds since the request was sent
    line: str  # what arrived, as printed
    content: int  # characters of content (or reasoning) it carried


@dataclass
class Observation:
    content_type: str = ""
    arrivals: list[Arrival] = field(default_factory=list)


@dataclass
class Verdict:
    name: str
    first: float | None = None
    duration: float | None = None
    gaps: list[float] = field(default_factory=list)
    late_share: float | None = None
    chunks: int = 0
    hint: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT[self.name]


def judge(observation: Observation, client: str) -> Verdict:
    """The verdict from the arrival times (pure; ``tests/test_probe.py`` tables it)."""
    if "text/event-stream" not in observation.content_type:
        return Verdict(
            "NOT STREAMING",
            hint="The server answered plain JSON: it ignores the stream flag, or the request "
            'body lacks "stream": true (a query parameter or header is not enough).',
        )
    content = [a for a in observation.arrivals if a.content]
    if len(content) < 2:
        return Verdict(
            "INCONCLUSIVE",
            chunks=len(content),
            hint="Fewer than two content chunks arrived: ask for a longer answer (--prompt).",
        )
    duration = content[-1].at
    gaps = [b.at - a.at for a, b in itertools.pairwise(content)]
    total = sum(a.content for a in content)
    late = sum(a.content for a in content if a.at >= duration * (1 - LATE))
    verdict = Verdict(
        "TRUE STREAMING",
        first=content[0].at,
        duration=duration,
        gaps=gaps,
        late_share=late / total,
        chunks=len(content),
    )
    if verdict.late_share >= PSEUDO_SHARE:  # type: ignore[operator]
        verdict.name = "PSEUDO-STREAMING"
        if client == "requests-buffered":
            verdict.hint = (
                "Everything arrived at once because this client read the whole body first: "
                "requests.post() without stream=True buffers. Use stream=True + iter_lines()."
            )
        else:
            verdict.hint = (
                "The server sent an event stream but it arrived all at once: something buffers "
                "between the model and you: a gateway (nginx buffering or gzip on "
                "text/event-stream), a compression middleware, a proxy batching events, or a "
                "server that generates everything before sending."
            )
    else:
        verdict.hint = "Chunks arrived as they were produced."
    return verdict


def report(verdict: Verdict) -> list[str]:
    lines = [f"verdict: {verdict.name}"]
    if verdict.first is not None and verdict.duration is not None:
        lines.append(f"  time to first chunk: {verdict.first:.3f} s of {verdict.duration:.3f} s")
    if verdict.gaps:
        median, largest = statistics.median(verdict.gaps), max(verdict.gaps)
        lines.append(
            f"  gaps: median {median:.3f} s, max {largest:.3f} s over {verdict.chunks} chunks"
        )
    if verdict.late_share is not None:
        lines.append(f"  content in the last 5% of the time: {verdict.late_share:.0%}")
    if verdict.hint:
        lines.append(f"  hint: {verdict.hint}")
    return lines


def _sse_line(line: str, api: Api) -> int:
    if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
        try:
            return api.content(json.loads(line[5:]))
        except ValueError:
            return 0
    return 0


def _endpoint(url: str, api: Api) -> str:
    return _base(url) + api.path


def _base(url: str) -> str:
    url = url.rstrip("/")
    for known in APIS.values():
        url = url.removesuffix(known.path)
    return url


Emit = Callable[[Arrival], None]


def _lines(
    url: str, body: dict[str, Any], headers: dict[str, str], client: str
) -> Iterator[tuple[str, str | None]]:
    """``url``: the API's own URL (``_endpoint``)."""
    """(content type, line) pairs as the chosen client hands them over; the first has no line
    (the response's content type is known before any line, even when none comes)."""
    if client in ("requests", "requests-buffered"):
        import requests

        buffered = client == "requests-buffered"
        response = requests.post(url, json=body, headers=headers, stream=not buffered, timeout=300)
        with response:
            if response.status_code >= 400:
                raise ProbeError(f"HTTP {response.status_code}: {response.text[:300]}")
            kind = response.headers.get("content-type", "")
            yield kind, None
            for line in response.iter_lines(decode_unicode=True):
                if line:
                    yield kind, line
    elif client == "httpx":
        import httpx

        with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as streamed:
            if streamed.status_code >= 400:
                streamed.read()
                raise ProbeError(f"HTTP {streamed.status_code}: {streamed.text[:300]}")
            kind = streamed.headers.get("content-type", "")
            yield kind, None
            for line in streamed.iter_lines():
                if line:
                    yield kind, line
    elif client == "raw":
        yield from _raw_lines(url, body, headers)
    else:
        raise ValueError(client)


def _raw_lines(
    url: str, body: dict[str, Any], headers: dict[str, str]
) -> Iterator[tuple[str, str | None]]:
    """The standard library's http.client, reading whatever has arrived (read1), no buffering."""
    parts = urlsplit(url)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.netloc, timeout=300)
    try:
        payload = json.dumps(body).encode()
        connection.request(
            "POST",
            parts.path,
            body=payload,
            headers={**headers, "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        if response.status >= 400:
            raise ProbeError(f"HTTP {response.status}: {response.read()[:300]!r}")
        kind = response.getheader("content-type", "")
        yield kind, None
        pending = b""
        while True:
            data = response.read1(65536)
            if not data:
                break
            pending += data
            *complete, pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            for line in complete:
                if line:
                    yield kind, line.decode("utf-8", "replace")
        if pending:
            yield kind, pending.decode("utf-8", "replace")
    finally:
        connection.close()


def _openai_lines(
    url: str, model: str, prompt: str, api_key: str, api: Api
) -> Iterator[tuple[str, str | None]]:
    import openai

    client = openai.OpenAI(base_url=_base(url), api_key=api_key or "probe", max_retries=0)
    try:
        stream = api.create(client, model, prompt)
        kind = stream.response.headers.get("content-type", "")
        yield kind, None
        with stream:
            for chunk in stream:
                yield kind, "data: " + chunk.model_dump_json(exclude_unset=True)
    except openai.APIStatusError as exc:
        raise ProbeError(f"HTTP {exc.status_code}: {exc.message}") from None
    except openai.APIConnectionError as exc:
        raise ProbeError(f"cannot connect: {exc}") from None
    finally:
        client.close()


class ProbeError(Exception):
    """The request failed before anything could be judged."""


def check_client(client: str) -> None:
    """Raise ProbeError, naming the install command, if ``client`` needs a missing library."""
    module = OPTIONAL.get(client)
    if module is not None and importlib.util.find_spec(module) is None:
        raise ProbeError(
            f"--client {client} needs the '{module}' package, which is not installed: "
            f"{INSTALL_HINT}"
        )


def run(
    url: str,
    model: str,
    *,
    client: str = DEFAULT_CLIENT,
    prompt: str = "Count from 1 to 20, one number per line.",
    api_key: str = "",
    api: str = DEFAULT_API,
    out: TextIO | None = None,
) -> Verdict:
    """Probe ``url`` and print what arrived and the verdict to ``out``."""
    import sys

    check_client(client)
    out = out or sys.stdout
    chosen = APIS[api]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    observation = Observation()
    started = time.perf_counter()
    if client == "openai":
        source = _openai_lines(url, model, prompt, api_key, chosen)
    else:
        source = _lines(_endpoint(url, chosen), chosen.body(model, prompt), headers, client)
    for kind, line in source:
        at = time.perf_counter() - started
        observation.content_type = kind
        if line is None:
            continue
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
        print(f"{stamp} +{at:.3f}s {line}", file=out, flush=True)
        content = _sse_line(line, chosen) or _json_content(line, chosen)
        observation.arrivals.append(Arrival(at, line, content))
    verdict = judge(observation, client)
    print("\n".join(report(verdict)), file=out, flush=True)
    return verdict


def _json_content(line: str, api: Api) -> int:
    """A plain-JSON answer's content (the whole answer is on one line or several)."""
    try:
        payload = json.loads(line)
    except ValueError:
        return 0
    return api.answer(payload)
