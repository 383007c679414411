"""``POST /v1/messages/count_tokens``: a Messages request's input tokens, as Anthropic's SDK
and Claude Code ask for them.

From the upstream when it can count: a deployment that speaks Messages is asked
(``/messages/count_tokens`` under its base URL, with the model's routing plan: retries, the
breakers, a fallback that speaks Messages too), and its answer is passed on. Otherwise, and
whenever that fails, the proxy's estimate (``anthropic.count_tokens``, no tokenizer), marked
as one the way the chat side marks estimated usage: ``{"input_tokens": N, "estimated": true}``
(the SDK keeps the extra field: ``result.model_extra``).

No relay here: the answer is one small JSON and nothing streams.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from proxy.asgi import Receive, Scope, Send, send_json
from proxy.endpoints.base import Endpoint, refuse, with_headers
from proxy.endpoints.messages import anthropic_headers, reaches_native, validate_messages
from proxy.endpoints.validate import optional
from proxy.errors import ProxyError, UpstreamMalformed
from proxy.formats.anthropic import count_tokens
from proxy.formats.anthropic.native import without_unsigned_thinking
from proxy.formats.messages import MessagesFormat, native
from proxy.observability.access import Access
from proxy.routing import Attempt, Plan
from proxy.upstreams.base import Call

API = "messages.count_tokens"  # the upstreams' name for it (``upstreams.openai.PATHS``)


class CountTokensRequest(BaseModel):
    """A Messages request without ``max_tokens``: what would be sent, to be counted."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A public model name (GET /v1/models)")
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


class CountTokens(Endpoint):
    """See the module docstring."""

    path = "/v1/messages/count_tokens"
    summary = "Count a Messages request's input tokens (the upstream's count, or an estimate)"
    schema = CountTokensRequest
    format = MessagesFormat

    def parse(self, body: dict[str, Any], request_id: str) -> Call:
        validate_messages(body)
        optional(body, "tools", list)  # counted one by one: a number here was a 500
        return Call(api=API, body=body, model=body["model"], stream=False, request_id=request_id)

    def prepare(self, call: Call, plan: Plan, scope: Scope) -> None:
        call.headers = anthropic_headers(scope)

    def reserve(self, body_size: int, call: Call) -> int:
        """Nothing (the limiter keeps its minimum of one): a count generates no tokens and is
        charged none (its ticket is released), so it must not crowd out what does."""
        return 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access: Access = scope["state"]["access"]
        try:
            call, plan, ticket = await self.accept(scope, receive, access)
        except ProxyError as error:  # as every endpoint refuses: a 429 is marked ``limited``
            await refuse(send, self.format, error, access)
            return
        try:  # a count generates no tokens: the request counts, its reservation is refunded
            access.model, access.stream = call.model, False
            answer = await counted(call, plan, access)
        finally:
            await ticket.release()
        with_headers(access, ticket)
        await send_json(send, 200, orjson.dumps(answer))


async def counted(call: Call, plan: Plan, access: Access) -> dict[str, Any]:
    """The upstream's count if one that speaks Messages answers, else the estimate."""
    if reaches_native(plan):
        answer = await _from_upstream(call, plan, access)
        if answer is not None:
            return answer
    return {"input_tokens": count_tokens(call.body), "estimated": True}


async def _from_upstream(call: Call, plan: Plan, access: Access) -> dict[str, Any] | None:
    """The plan's attempts until one answers; None at the first that cannot count (it does
    not speak Messages) or when every one failed."""
    attempt: Attempt | None = None
    try:
        async for attempt in plan:
            if not native(attempt.route):
                return None
            try:
                answer = await _ask(call, attempt)
            except ProxyError as error:
                plan.failed(attempt, error)
                continue
            plan.succeeded(attempt)
            access.answered(attempt)
            return answer
    except ProxyError:  # nothing left: the estimate will do
        return None
    finally:
        if attempt is not None:
            attempt.release()
        access.routed(plan)
    return None  # pragma: no cover (a plan ends by raising)


async def _ask(call: Call, attempt: Attempt) -> dict[str, Any]:
    body = without_unsigned_thinking(call.body)
    asked = dataclasses.replace(call, model=attempt.model, body=body)
    reply = await attempt.route.upstream.open(asked, attempt.route)
    await reply.aclose()
    payload = reply.completion
    tokens = payload.get("input_tokens") if isinstance(payload, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise UpstreamMalformed("The upstream's token count has no 'input_tokens' number.")
    return {"input_tokens": tokens}
