"""The predict route's fast path: a valid predict request answered in front of FastAPI.

Under load, FastAPI's machinery around a predict call (the middleware chain, routing,
dependency solving, the request and response objects) cost about 70% of the gateway's CPU per
request (docs/benchmarks.md has the profile). Here a request that will plainly succeed
validation is answered directly: POST to the path of a served model, a JSON content type, a
body within the size limit that parses (orjson, stricter than FastAPI's json.loads: what it
refuses goes to FastAPI) and validates against the route's own body type, as FastAPI
validates it (pydantic, in Python mode). The answer is made by gateway.api.predict.answer,
as the FastAPI route makes it, and counted in the same metrics under the same route.

Everything else goes down the FastAPI route as before, with the part of the body already read
replayed first: a body that does not parse or validate, another content type, a body over the
limit, a disconnect. So every 400, 413 and 422 is FastAPI's own, with the same body and the
same locations, and the fast path never has to imitate one.
"""

from __future__ import annotations

import logging
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.deps import Context
from gateway.api.predict import answer
from gateway.limits import Answer, content_length
from gateway.routes import ServedRoutes
from shared.errors import StreamopsError

log = logging.getLogger(__name__)
_JSON = b"application/json"


class FastPredict:
    """Pure ASGI middleware, the outermost one of the app (inside Starlette's error
    middleware only, which answers an unexpected exception here as anywhere)."""

    def __init__(
        self, app: ASGIApp, served: ServedRoutes, context: Context, limit: int, answer: Answer
    ) -> None:
        self.app = app
        self.served = served
        self.context = context
        self.limit = limit
        self.error_response = answer  # gateway.app's answer to a named error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handed_on = await self._answer(scope, receive, send)
            if handed_on is None:
                return
            receive = handed_on
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """None when the request was answered here; else the receive to hand on (which
        replays what was read)."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return receive
        found = self.served.plan_of(scope["path"])
        if found is None:
            return receive
        headers = _headers(scope)
        if not _is_json(headers.get(b"content-type")) or (content_length(scope) or 0) > self.limit:
            return receive
        started = time.perf_counter()
        messages, body = await self._read(receive)
        if body is None:
            return _replay(messages, receive)
        plan, route = found
        try:
            rows = plan.rows_of(orjson.loads(body))
        except Exception:  # FastAPI says why, in its own words
            return _replay(messages, receive)
        status = 500
        try:
            content, extra = await answer(
                self.context,
                plan,
                rows,
                _text(headers.get(b"x-request-id")),
                _text(headers.get(b"x-routing-key")),
            )
            status = 200
            await send(_start(200, content, extra))
            await send({"type": "http.response.body", "body": content})
        except StreamopsError as exc:  # as the app's handler for named errors answers
            response = self.error_response(exc)
            status = response.status_code
            if status == 500:
                log.error("unexpected %s on %s: %s", type(exc).__name__, scope["path"], exc)
            await response(scope, receive, send)
        # Anything else goes up to Starlette's error middleware: the app's 500, then raised
        # again for the server to log (and counted here as a 500).
        finally:
            elapsed = time.perf_counter() - started
            self.context.metrics.request(route.path, "POST", status, elapsed)
        return None

    async def _read(self, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The messages read, and the whole body; None for the body when it cannot be taken
        here (over the limit, or not a plain request message)."""
        messages: list[Message] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return messages, None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return messages, b"".join(chunks)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name, value)  # the first one, as Starlette's Headers.get
    return found


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == _JSON


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def _start(status: int, content: bytes, headers: dict[str, str]) -> Message:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(content)).encode()))
    raw.append((b"content-type", _JSON))
    return {"type": "http.response.start", "status": status, "headers": raw}
