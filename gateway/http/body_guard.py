"""An HTTP/1 connection stays usable after an answer that left the request's body unread, or the answer says
``Connection: close``.

A route may answer before it has read the whole body: a body over the limit (413, on the declared length or
once the bytes read pass it), a refusal that comes before the body is read (credentials, query, route,
method). The server cannot then tell where the next request starts: granian (hyper) drops what it has buffered
and, when more is still on its way, closes the connection after the answer, adding ``Connection: close`` only
when it decided that before the answer's head went out. A client reusing the connection then loses its next
request. So, before the answer starts, the rest of the body is read and dropped (what a request declares up to
``KEEP_BODY_BYTES`` in all, within ``DRAIN_SECONDS``) and the connection carries the next request; past either
bound the answer says ``Connection: close`` and the server closes after it.

A request without a body (no ``Content-Length`` or ``0``, not chunked), the common claim, is not wrapped.
HTTP/2 is not either: an unread body there ends its own stream only.
"""

from __future__ import annotations

import asyncio

from litestar.types import HTTPScope, Message, Receive, ReceiveMessage, Send

# A refused body up to this size in all (4x the largest any route takes) is read out; a larger one closes.
KEEP_BODY_BYTES = 4 * 1024 * 1024
DRAIN_SECONDS = 2.0  # longest the answer waits for the rest of a refused body
CONNECTION_CLOSE = (b"connection", b"close")


class BodyGuard:
    """The ``receive`` and ``send`` of one request with a body: ``receive`` notes when the body has ended,
    ``send`` reads out what is left of it before the answer starts (or marks the answer ``Connection: close``)."""

    __slots__ = ("_declared", "_ended", "_read", "_receive", "_send")

    def __init__(self, receive: Receive, send: Send, declared: int | None) -> None:
        self._receive = receive
        self._send = send
        self._declared = declared  # the Content-Length; None for a chunked body
        self._read = 0
        self._ended = False

    async def receive(self) -> ReceiveMessage:
        message = await self._receive()
        if message["type"] == "http.request":
            self._read += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._ended = True
        else:  # http.disconnect: the client left, nothing more will come
            self._ended = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self._ended and not await self._read_out():
            message = {**message, "headers": [*message.get("headers", ()), CONNECTION_CLOSE]}
        await self._send(message)

    async def _read_out(self) -> bool:
        """Read and drop the rest of the body: True once it has ended, False when it is too large or too slow."""
        if self._declared is not None and self._declared > KEEP_BODY_BYTES:
            return False
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while not self._ended:
                    await self.receive()
                    if self._read > KEEP_BODY_BYTES:
                        return False
        except TimeoutError:
            return False
        return True


def guarded(scope: HTTPScope, receive: Receive, send: Send) -> tuple[Receive, Send]:
    """``receive`` and ``send`` as they are for a request without a body on HTTP/1, else a ``BodyGuard``'s."""
    if scope.get("http_version", "1.1") not in ("1.1", "1.0"):
        return receive, send
    declared: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = value
        elif name == b"transfer-encoding":  # chunked: the length is known only at the end
            guard = BodyGuard(receive, send, None)
            return guard.receive, guard.send
    if declared is None or declared == b"0":
        return receive, send
    guard = BodyGuard(receive, send, int(declared) if declared.isdigit() else None)
    return guard.receive, guard.send
