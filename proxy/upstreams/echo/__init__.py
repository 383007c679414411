"""The built-in fake model: it answers from memory, with no network and no key.

It is the default model and the reference the streaming tests time against: it streams the
last user input back (``chat.py``; with ``chunk: char, delay_ms: 300``, the classic demo of one
character every 0.3 s), the prompts of a text completion (``completions.py``), and hashed unit
vectors as embeddings (``embeddings.py``). Each API it serves is one module and one line in
``ANSWERS``; Responses calls reach it translated to chat (``formats.responses``). Uploads:
a text file's transcript is its text (``audio.py``); ``/v1/files`` keeps files in a bounded
temporary store, removed at shutdown (``files.py``, ``store.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from proxy.errors import InvalidRequest
from proxy.settings import EchoUpstream
from proxy.upstreams.base import Call, Reply, Route
from proxy.upstreams.echo import audio, chat, completions, embeddings, files
from proxy.upstreams.echo.store import FileStore

Answer = Callable[[EchoUpstream, Call, Route], Awaitable[Reply]]

ANSWERS: dict[str, Answer] = {
    "chat": chat.chat,
    "completions": completions.completions,
    "embeddings": embeddings.embeddings,
    "audio": audio.audio,
    "files": files.files,
}


class EchoModel:
    """An ``Upstream`` answering from memory; see the module docstring."""

    apis = frozenset(ANSWERS)

    def __init__(self, config: EchoUpstream) -> None:
        self.config = config
        self.files = FileStore()  # /v1/files (nothing on disk until the first upload)

    async def open(self, call: Call, route: Route) -> Reply:
        answer = ANSWERS.get(call.api)
        if answer is None:
            raise InvalidRequest(f"The echo model does not serve the {call.api} API.")
        return await answer(self.config, call, route)

    async def aclose(self) -> None:
        self.files.close()
