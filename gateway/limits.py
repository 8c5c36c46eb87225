"""Body size limits, enforced before a body is read into memory.

A pure ASGI middleware: a declared Content-Length over the limit is refused at once, and a
body without one (chunked) is counted as it streams in and refused when it passes the limit.
The refusal is the app's own answer to PayloadTooLarge (`answer`: gateway.app's STATUS table).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from shared.errors import PayloadTooLarge, StreamopsError

Answer = Callable[[StreamopsError], Response]


class BodyLimit:
    def __init__(self, app: Any, limit_for: Callable[[str], int], answer: Answer) -> None:
        self.app = app
        self.limit_for = limit_for
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        too_large = False
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise PayloadTooLarge(f"request body larger than {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app makes of the interrupted body (FastAPI answers 400 when the
            # body cannot be read), the client is told the real reason.
            nonlocal refused
            if too_large:
                if not refused:
                    refused = True
                    await self._refuse(scope, receive, send, limit)
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except PayloadTooLarge:
            if not refused:
                await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = self.answer(PayloadTooLarge(f"request body larger than {limit} bytes"))
        # The rest of the body is never read: the connection cannot carry another request.
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
