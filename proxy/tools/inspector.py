"""``chat-stream-proxy inspect``: a server that shows exactly what a client sends.

Raw asyncio streams, no framework, so nothing is normalised before it is shown: the request
line, the headers in order and as sent, and the body, framed the way HTTP frames it
(``Content-Length`` or chunked encoding, never a read timeout). It then decodes what it
recognises (query string, JSON, form, multipart parts with file names and sizes, Basic auth,
cookies), redacts bearer keys and passwords unless ``--show-secrets``, and answers with a JSON
echo of the parsed request. A chat completion request gets an answer in the shape its client
expects (an SSE stream when the body says ``"stream": true``), so the client's code keeps
working while you look at what it sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import sys
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.cookies import SimpleCookie
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 64 * 1024
_PART_HEADERS = ("content-disposition", "content-type")
SECRET = "*** (hidden: --show-secrets)"


class BadRequest(Exception):
    pass


async def read_request(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """One request off the connection, or None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("the connection ended inside the request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(f"request head larger than {MAX_HEAD} bytes") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest(f"not an HTTP request line: {lines[0]!r}") from None
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if line]
    names = {name.lower(): value for name, value in headers}
    if "chunked" in names.get("transfer-encoding", "").lower():
        body, framing = await _read_chunked(reader), "chunked"
    elif "content-length" in names:
        length = int(names["content-length"])
        body, framing = await reader.readexactly(length), f"Content-Length: {length}"
    else:
        body, framing = b"", "no body"
    return {
        "method": method,
        "target": target,
        "version": version,
        "headers": [list(pair) for pair in headers],
        "body": body,
        "framing": framing,
    }


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the end
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def decode(request: dict[str, Any], show_secrets: bool = False) -> dict[str, Any]:
    """What the request means: the JSON echo the client gets back (and the printout's source)."""
    url = urlsplit(request["target"])
    body: bytes = request["body"]
    headers = []
    report: dict[str, Any] = {
        "method": request["method"],
        "path": url.path,
        "http_version": request["version"],
        "query": parse_qs(url.query, keep_blank_values=True),
        "framing": request["framing"],
        "body_size": len(body),
        "body_base64": base64.b64encode(body).decode(),
    }
    for name, value in request["headers"]:
        lowered = name.lower()
        if lowered == "authorization":
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "basic":
                report["basic_auth"] = _basic(credentials, show_secrets)
            if not show_secrets and credentials:
                value = f"{scheme} {SECRET}"
        elif lowered == "cookie":
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(value)
            report["cookies"] = {key: morsel.value for key, morsel in cookie.items()}
        headers.append([name, value])
    report["headers"] = headers
    kind = next((v for n, v in request["headers"] if n.lower() == "content-type"), "")
    report["content_type"] = kind
    media = kind.split(";")[0].strip().lower()
    if body:
        if (
            media == "application/json"
            or media.endswith("+json")
            or (not media and body[:1] in b"{[")
        ):
            try:
                report["json"] = json.loads(body)
            except ValueError:
                report["json_error"] = "the body is not valid JSON"
        elif media == "application/x-www-form-urlencoded":
            report["form"] = parse_qs(body.decode("latin-1"), keep_blank_values=True)
        elif media.startswith("multipart/"):
            report["parts"] = _multipart(kind, body)
        else:
            try:
                report["text"] = body.decode("utf-8")
            except UnicodeDecodeError:
                report["text"] = None
    return report


def _basic(credentials: str, show_secrets: bool) -> dict[str, Any]:
    try:
        user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return {"error": "not base64 of user:password"}
    return {"user": user, "password": password if show_secrets else SECRET}


def _multipart(kind: str, body: bytes) -> list[dict[str, Any]]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + kind.encode() + b"\r\n\r\n" + body
    )
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        entry: dict[str, Any] = {
            "name": part.get_param("name", header="content-disposition"),
            "filename": part.get_filename(),
            "content_type": part.get("content-type"),  # as sent: None when the client sent none
            "size": len(payload),
            "headers": [[k, str(v)] for k, v in part.items()],
        }
        if entry["filename"] is None:
            entry["value"] = payload.decode("utf-8", "replace")
        parts.append(entry)
    return parts


def render(report: dict[str, Any], request: dict[str, Any], peer: str) -> str:
    """The human-readable printout of one request."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"==> {stamp} from {peer}",
        f"{request['method']} {request['target']} {request['version']}",
    ]
    lines += [f"{name}: {value}" for name, value in report["headers"]]
    lines.append(f"-- body: {report['body_size']} bytes ({report['framing']})")
    for key in ("query", "basic_auth", "cookies", "form"):
        if report.get(key):
            lines.append(f"{key}: {json.dumps(report[key], ensure_ascii=False)}")
    if "json" in report:
        lines.append(f"json: {json.dumps(report['json'], ensure_ascii=False, indent=2)}")
    for part in report.get("parts", ()):
        described = f'part name="{part["name"]}"'
        if part["filename"] is not None:
            described += f' filename="{part["filename"]}"'
        described += f" content-type={part['content_type']} {part['size']} bytes"
        if "value" in part:
            described += f" value={part['value'][:200]!r}"
        extra = [f"{k}: {v}" for k, v in part["headers"] if k.lower() not in _PART_HEADERS]
        if extra:
            described += " headers: " + "; ".join(extra)
        lines.append(described)
    if report.get("text"):
        lines.append(report["text"][:4000])
    return "\n".join(lines) + "\n"


def answer(report: dict[str, Any]) -> tuple[bytes, bytes]:
    """(content type, body) of the reply: a chat answer for chat requests, else the echo."""
    data = report.get("json")
    if report["path"].endswith("/chat/completions") and isinstance(data, dict):
        count = len(data.get("messages") or [])
        text = f"inspect: received {count} message(s) for {data.get('model')}"
        base = {
            "id": "chatcmpl-inspect",
            "created": int(time.time()),
            "model": str(data.get("model")),
        }
        if data.get("stream"):
            events = [
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                },
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
                },
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                },
            ]
            body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
            return b"text/event-stream; charset=utf-8", body + b"data: [DONE]\n\n"
        completion = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "inspect": report,
        }
        return b"application/json", json.dumps(completion).encode()
    return b"application/json", json.dumps(report, ensure_ascii=False).encode()


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, show_secrets: bool, out: TextIO
) -> None:
    host, port = writer.get_extra_info("peername")[:2]
    peer = f"{host}:{port}"
    try:
        while True:
            try:
                request = await read_request(reader)
            except (BadRequest, ValueError, asyncio.IncompleteReadError) as exc:
                out.write(f"==> from {peer}: bad request: {exc}\n")
                writer.write(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                break
            if request is None:
                break
            report = decode(request, show_secrets)
            out.write(render(report, request, peer))
            out.flush()
            kind, body = answer(report)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                % (kind, len(body), body)
            )
            await writer.drain()
            if any(
                n.lower() == "connection" and v.lower() == "close" for n, v in request["headers"]
            ):
                break
    except (ConnectionError, asyncio.CancelledError):
        pass  # the client left, or the inspector is stopping: nothing to report
    finally:
        writer.close()


async def start(
    host: str, port: int, show_secrets: bool = False, out: TextIO | None = None
) -> asyncio.Server:
    stream = out or sys.stdout
    return await asyncio.start_server(
        lambda r, w: handle(r, w, show_secrets, stream), host, port, limit=MAX_HEAD
    )


def serve_inspector(host: str, port: int, *, show_secrets: bool = False) -> None:
    async def main() -> None:
        server = await start(host, port, show_secrets)
        print(
            f"chat-stream-proxy inspect: listening on http://{host}:{port} (Ctrl-C to stop)",
            flush=True,
        )
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
