"""The operations listener (product.md, "Operations listener"): a second HTTP port, on loopback unless configured,
for what the public port must not show (run ids, partitions behind, memory figures; metrics later).

It is the standard library's WSGI server on threads of its own (one per connection, each dropping a client silent
for 5 s), answering from coroutines run on the process's event loop (where the Redis clients and the Postgres pool
live). Operations traffic is a probe or a scrape every few seconds; the claim path pays nothing for it. Of
several processes of one host (granian's workers) the first to bind the port serves it; the others find it taken
and serve none.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socketserver
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)
ANSWER_SECONDS = 5.0  # an answer not ready by then is a 503: a probe must not hang

Route = Callable[[], Awaitable[tuple[int, bytes]]]
_REASONS = {
    200: "200 OK",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    503: "503 Service Unavailable",
}


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # a client that connects and sends nothing is dropped, not waited for

    def log_message(self, format: str, *args: Any) -> None:
        """No line per probe."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, none of them outliving the process: a slow client never holds up a probe or
    the listener's shutdown."""

    daemon_threads = True


class OpsListener:
    def __init__(
        self, host: str, port: int, routes: dict[str, Route], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.host, self.port = host, port
        self.routes = routes
        self.loop = loop
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Serve on a thread; False when the port is taken (another process of this host serves it)."""
        try:
            self._server = make_server(
                self.host, self.port, self._app, server_class=_Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            log.info("operations listener %s:%d not started here: %s", self.host, self.port, exc)
            return False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="ops-listener", daemon=True
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = self.routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            status, body = 404, b'{"error":"not_found","message":"No such route."}'
        elif environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            status, body = 405, b'{"error":"invalid_request","message":"Method not allowed on this route."}'
        else:
            status, body = self._answer(route)
        start_response(
            _REASONS.get(status, f"{status} Status"),
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else []

    def _answer(self, route: Route) -> tuple[int, bytes]:
        future = asyncio.run_coroutine_threadsafe(_awaited(route), self.loop)
        try:
            return future.result(timeout=ANSWER_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return 503, b'{"error":"overloaded","message":"The answer took too long."}'
        except Exception:
            log.exception("operations route failed")
            return 503, b'{"error":"overloaded","message":"The answer failed; see the log."}'


async def _awaited(route: Route) -> tuple[int, bytes]:
    return await route()
