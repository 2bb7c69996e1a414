"""Accepting connections on a TLS listener (STRICT or PERMISSIVE), on asyncio or uvloop.

Why not `loop.create_server(ssl=...)`: a failed handshake there never reaches
any code of ours (both loops drop the SSLError silently outside debug mode), so
failures could not be counted by reason, and PERMISSIVE needs to look at the
first byte before deciding on TLS.  Here each accepted socket is handed to
`loop.connect_accepted_socket()`, which awaits the handshake and raises its
error to us.

PERMISSIVE (2.12.1): the first byte is peeked (MSG_PEEK, nothing consumed);
0x16, a TLS handshake record, means TLS, anything else plaintext.  A client
that sends nothing is dropped after `first_byte_timeout`.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from typing import Callable

from gateway.listener.tls import TlsTermination

log = logging.getLogger("gateway.listener")

TLS_HANDSHAKE_RECORD = 0x16
FIRST_BYTE_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
ACCEPTS_PER_WAKEUP = 128       # then yield so established connections get the loop too
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Gate(asyncio.Protocol):
    """Stands in for the application protocol until the handshake is judged.

    The TLS transport calls connection_made only once the handshake is complete;
    a refused client (SAN rule) is closed there, before any request byte is read,
    and the real protocol is never created."""

    __slots__ = ("_factory", "_tls")

    def __init__(self, factory: Callable[[], asyncio.BaseProtocol], tls: TlsTermination):
        self._factory = factory
        self._tls = tls

    def connection_made(self, transport) -> None:
        if not self._tls.handshake_ok(transport.get_extra_info("ssl_object")):
            transport.abort()
            return
        protocol = self._factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        pass                    # only a refused connection can get here, and it is closing

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        pass


class AcceptServer:
    """What `start_server` returns: close() stops accepting (open connections stay)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 protocol_factory: Callable[[], asyncio.BaseProtocol],
                 ssl_context: ssl.SSLContext | None, tls: TlsTermination | None,
                 permissive: bool, first_byte_timeout: float, handshake_timeout: float):
        self._loop = loop
        self._sockets = sockets
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._tls = tls
        self._permissive = permissive
        self._first_byte_timeout = first_byte_timeout
        self._handshake_timeout = handshake_timeout
        self._tls_factory = (lambda: _Gate(protocol_factory, tls)) if tls is not None \
            else protocol_factory
        self._pending: set[asyncio.Task] = set()
        self._serving = True
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        # Connections still deciding or handshaking were never handed to the
        # application: nothing to drain, drop them.
        for task in list(self._pending):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # ------------------------------------------------------------------ accept

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _addr = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES and self._serving:
                    # Out of descriptors: stop accepting for a moment instead of spinning.
                    log.error("accept failed (%s); pausing accepts for 1 s", exc.strerror)
                    fd = listening.fileno()
                    self._loop.remove_reader(fd)
                    self._loop.call_later(1.0, self._resume, listening)
                    return
                raise
            conn.setblocking(False)
            task = self._loop.create_task(self._serve(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _resume(self, listening: socket.socket) -> None:
        if self._serving:
            self._loop.add_reader(listening.fileno(), self._accept, listening)

    async def _serve(self, conn: socket.socket) -> None:
        handed_off = False
        try:
            use_tls = self._ssl is not None
            if self._permissive:
                first = await self._first_byte(conn)
                if first is None:
                    return
                use_tls = first == TLS_HANDSHAKE_RECORD
                if not use_tls and self._tls is not None:
                    self._tls.stats.plaintext_connections += 1
            handed_off = True     # from here the transport owns (and closes) the socket
            if not use_tls:
                await self._loop.connect_accepted_socket(self._factory, conn)
                return
            try:
                await self._loop.connect_accepted_socket(
                    self._tls_factory, conn, ssl=self._ssl,
                    ssl_handshake_timeout=self._handshake_timeout)
            except (OSError, EOFError, asyncio.TimeoutError) as exc:
                if self._tls is not None:
                    self._tls.handshake_failed(exc)
        except asyncio.CancelledError:
            raise
        except Exception:   # one bad connection must never stop the listener
            log.exception("error setting up a downstream connection")
        finally:
            if not handed_off:
                conn.close()

    async def _first_byte(self, conn: socket.socket) -> int | None:
        """Peek at the first byte; None when the client closed or stayed silent."""
        loop = self._loop
        readable = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, _settle, readable, True)
        timer = loop.call_later(self._first_byte_timeout, _settle, readable, False)
        try:
            arrived = await readable
        finally:
            loop.remove_reader(fd)
            timer.cancel()
        if not arrived:
            if self._tls is not None:
                self._tls.stats.first_byte_timeouts += 1
            return None
        try:
            data = conn.recv(1, socket.MSG_PEEK)
        except OSError:
            return None
        return data[0] if data else None


def _settle(fut: asyncio.Future, value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _listening_sockets(host: str | None, port: int, backlog: int,
                       reuse_port: bool) -> list[socket.socket]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # as create_server does: "::" must not also claim the IPv4 port
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def start_server(loop: asyncio.AbstractEventLoop, host: str | None, port: int,
                       protocol_factory: Callable[[], asyncio.BaseProtocol], *,
                       tls: TlsTermination | None = None,
                       ssl_context: ssl.SSLContext | None = None,
                       permissive: bool | None = None,
                       backlog: int = 2048, reuse_port: bool = False,
                       sockets: list[socket.socket] | None = None,
                       first_byte_timeout: float = FIRST_BYTE_TIMEOUT,
                       handshake_timeout: float = HANDSHAKE_TIMEOUT) -> AcceptServer:
    """Serve a TLS listener.  With `tls`, its context, mode, counters and SAN rule are
    used; `ssl_context`/`permissive` alone give a bare server (no counting, no SAN rule).
    `sockets` (already listening) replaces host/port, e.g. for SO_REUSEPORT workers."""
    if tls is not None:
        ssl_context = ssl_context or tls.server_context
        if permissive is None:
            permissive = tls.permissive
    if ssl_context is None:
        raise ValueError("a TLS listener needs an SSL context")
    if sockets is None:
        sockets = _listening_sockets(host, port, backlog, reuse_port)
    else:
        for sock in sockets:
            sock.setblocking(False)
    return AcceptServer(loop, sockets, protocol_factory, ssl_context, tls, bool(permissive),
                        first_byte_timeout, handshake_timeout)


async def start_permissive_server(loop: asyncio.AbstractEventLoop, host: str | None, port: int,
                                  protocol_factory: Callable[[], asyncio.BaseProtocol],
                                  ssl_context: ssl.SSLContext, backlog: int = 2048,
                                  **kwargs) -> AcceptServer:
    """TLS and plaintext on one port (mode PERMISSIVE)."""
    return await start_server(loop, host, port, protocol_factory, ssl_context=ssl_context,
                              permissive=True, backlog=backlog, **kwargs)
