"""What `cnnlab serve` guards itself with beyond loopback: the token, and every bound it puts
on its clients (connections, slow senders, sizes, the inference queue), all in `Limits`.

A request that breaks a bound gets a JSON error (`{"error": "..."}`): 401 without the token,
408 too slow, 413 too large, 503 overloaded; never a 500 and never a hang. The connection
bounds live in a subclass of uvicorn's h11 protocol (`Config(http=...)` takes a class):
uvicorn itself has no deadline for a request's headers, and its own connection cap answers
in plain text.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from cnnlab.errors import CnnlabError

T = TypeVar("T")
TOKEN_ENV = "CNNLAB_SERVE_TOKEN"
LARGEST_LIMIT = 2**31 - 1  # the socket calls take a C int (a larger backlog overflows)
# Open without the token: the probe, the page (it reads the token from its own URL) and
# the API documentation.
OPEN_PATHS = frozenset({"/", "/healthz", "/docs", "/openapi.json"})


class HttpError(Exception):
    """A request refused with `status` and a one-line JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _limit(default: Any, unit: str, doc: str, factory: Callable[[], Any] | None = None) -> Any:
    metadata = {"unit": unit, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Limits:
    """Every bound on clients, with its unit; `cnnlab serve --limit NAME=VALUE` overrides
    one. The table in docs/export-serve.md lists them (a test keeps it in step)."""

    connections: int = _limit(100, "connections", "open connections; a request on one more "
                              "is a 503 and its connection is closed")
    backlog: int = _limit(128, "connections", "connections the kernel queues before the "
                          "server accepts them")
    header_bytes: int = _limit(16_384, "bytes", "request line and headers; more is a 431")
    header_seconds: float = _limit(10.0, "seconds", "from a connection's opening (on a "
                                   "kept-alive one, a request's first byte) to the end of "
                                   "its headers; slower is a 408 and the connection is "
                                   "closed")
    body_seconds: float = _limit(30.0, "seconds", "to send a request's body; slower is a "
                                 "408 and the connection is closed")
    keep_alive_seconds: int = _limit(5, "seconds", "an idle kept-alive connection stays open")
    body_bytes: int = _limit(5 * 1024 * 1024, "bytes", "a request's body, so also a whole "
                             "batch; more is a 413")
    picture_pixels: int = _limit(16_000_000, "pixels", "one decoded picture (a "
                                 "decompression bomb); more is a 413")
    batch_files: int = _limit(64, "pictures", "pictures in one batch request; more is a 413")
    batch_pixels: int = _limit(32_000_000, "pixels", "all decoded pictures of one request "
                               "together; more is a 413")
    threads: int = _limit(None, "threads", "inference threads, one torch thread each "
                          "(default: the number of cores)", lambda: os.cpu_count() or 1)
    queue: int = _limit(32, "requests", "requests waiting for an inference thread; one more "
                        "is a 503")
    queue_seconds: float = _limit(10.0, "seconds", "the longest a request waits for an "
                                  "inference thread; longer is a 503")

    def with_overrides(self, settings: list[str]) -> Limits:
        """These limits with NAME=VALUE settings applied (each a positive number)."""
        kinds = {f.name: f.type for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for setting in settings:
            name, _, text = setting.partition("=")
            if name not in kinds:
                raise CnnlabError(f"--limit {setting!r}: no such limit; the limits are "
                                  f"{', '.join(kinds)}")
            try:
                value = int(text) if kinds[name] == "int" else float(text)
            except ValueError:
                value = 0
            if not 0 < value <= LARGEST_LIMIT:
                raise CnnlabError(f"--limit {setting!r}: the value must be a positive "
                                  f"{'whole ' if kinds[name] == 'int' else ''}number up to "
                                  f"{LARGEST_LIMIT}")
            changes[name] = value
        return dataclasses.replace(self, **changes)


def choose_token(given: str | None, no_auth: bool, loopback: bool) -> tuple[str | None, bool]:
    """The token requests must carry (None: none) and whether it was generated here: `given`
    (--token, else $CNNLAB_SERVE_TOKEN), none on loopback or with --no-auth, else a new one."""
    given = given if given is not None else os.environ.get(TOKEN_ENV) or None
    if given is not None and no_auth:
        raise CnnlabError(f"--no-auth and a token (--token or ${TOKEN_ENV}) contradict each "
                          "other: drop one")
    if given is not None:
        if not given or not given.isascii() or not given.isprintable() or " " in given:
            raise CnnlabError("the token must be printable ASCII without spaces, and not "
                              "empty")
        return given, False
    if no_auth or loopback:
        return None, False
    return secrets.token_urlsafe(32), True


class RequireToken:
    """ASGI middleware: every path but OPEN_PATHS needs `Authorization: Bearer <token>`,
    compared in constant time; anything else is a 401 with a JSON error."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                await send_json(send, 401, "missing or wrong token: send the header "
                                "'Authorization: Bearer TOKEN' with the token cnnlab serve "
                                "printed or was given", [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


async def send_json(send: Any, status: int, message: str,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A whole JSON error response through an ASGI `send`."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class InferenceQueue:
    """At most `threads` inferences at once, at most `queue` requests waiting, none waiting
    longer than `queue_seconds`: a full or slow queue is a 503 at once, not a hang."""

    def __init__(self, limits: Limits) -> None:
        self.limits, self.waiting = limits, 0
        self.limiter = anyio.CapacityLimiter(limits.threads)

    async def run(self, work: Callable[[], T]) -> T:
        if self.waiting >= self.limits.queue:
            raise HttpError(503, f"overloaded: {self.waiting} requests already wait for the "
                            "model; try again shortly")
        self.waiting += 1
        try:
            with anyio.move_on_after(self.limits.queue_seconds) as wait:
                await self.limiter.acquire()
        finally:
            self.waiting -= 1
        if wait.cancelled_caught:
            raise HttpError(503, f"overloaded: no inference thread free within "
                            f"{self.limits.queue_seconds:g} s; try again shortly")
        try:
            return await anyio.to_thread.run_sync(work)
        finally:
            self.limiter.release()


async def within(seconds: float, reading: Awaitable[T]) -> T:
    """`reading` (a request body), or a 408 when the client takes longer than `seconds`."""
    with anyio.move_on_after(seconds) as deadline:
        return await reading
    assert deadline.cancelled_caught
    raise HttpError(408, f"the request body took longer than {seconds:g} s to arrive")


def raw_json_response(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 JSON error response that closes the connection, for the protocol
    level, where no request (or no ASGI app) is there to answer."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def guarded_protocol(limits: Limits) -> type:
    """uvicorn's h11 protocol with the connection bounds of `limits`: a deadline for each
    request's headers (a client sending a byte at a time is cut off with a 408), a cap on
    their size (431), JSON for the 400 of a malformed request, and a 503 for requests over
    the connection cap."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    async def over_capacity(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send_json(send, 503, f"overloaded: over {limits.connections} open connections; "
                        "try again shortly", [(b"connection", b"close")])

    class GuardedProtocol(H11Protocol):
        headers_due: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.start_header_deadline()
            if len(self.connections) > limits.connections:
                self.app = over_capacity

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self.start_header_deadline()
                pending = self.conn.trailing_data[0] + data
                end = pending.find(b"\r\n\r\n")
                if (end if end >= 0 else len(pending)) > limits.header_bytes:
                    self.transport.write(raw_json_response(
                        431, "Request Header Fields Too Large", "the request line and "
                        f"headers are over the limit of {limits.header_bytes:,} bytes"))
                    self.transport.close()
                    return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self.headers_due is not None:
                self.headers_due.cancel()
                self.headers_due = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self.headers_due is not None:
                self.headers_due.cancel()
            super().connection_lost(exc)

        def start_header_deadline(self) -> None:
            if self.headers_due is None:
                self.headers_due = self.loop.call_later(limits.header_seconds, self.too_slow)

        def too_slow(self) -> None:
            self.headers_due = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self.conn.trailing_data[0]:  # part of a request came: say why
                    self.transport.write(raw_json_response(
                        408, "Request Timeout", f"the request headers took longer than "
                        f"{limits.header_seconds:g} s to arrive"))
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self.transport.write(raw_json_response(400, "Bad Request", msg))
            self.transport.close()

    return GuardedProtocol


def uvicorn_settings(limits: Limits) -> dict[str, Any]:
    """The keyword arguments that put `limits` on uvicorn."""
    return {"http": guarded_protocol(limits), "backlog": limits.backlog,
            "timeout_keep_alive": limits.keep_alive_seconds,
            "h11_max_incomplete_event_size": limits.header_bytes}
