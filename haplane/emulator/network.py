"""Loopback forwarding: what makes an external IP or a load balancer's IP answer.

One asyncio loop in a background thread carries every listener. A listener
on ``ip:port`` asks its ``pick`` function for a backend at each new
connection and pipes bytes both ways (TLS passes through untouched, so a
client verifies the replica's own certificate, as through a GCE access
config or a network load balancer). Closing a listener also ends the
connections it carries: an IP taken off an instance, or a forwarding rule
deleted, breaks the connections through it, kept-alive ones included.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Callable

Backend = tuple[str, int]
Pick = Callable[[], Backend | None]


def require_loopback(ip: str) -> None:
    if not ipaddress.ip_address(ip).is_loopback:
        raise ValueError(f"refusing to bind {ip}: the emulator binds only inside 127.0.0.0/8")


def can_bind(ip: str, port: int) -> bool:
    """Whether ``ip:port`` is free on this host (nothing listens there; TIME_WAIT does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except RuntimeError:
            pass


class Forwarder:
    """TCP listeners on loopback addresses, each forwarding to a backend chosen per connection."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="forwarder", daemon=True)
        self._thread.start()
        self._servers: dict[Backend, asyncio.AbstractServer] = {}
        # the open connections through each listener (both ends), ended when the listener closes
        self._conns: dict[Backend, set[asyncio.StreamWriter]] = {}
        self._lock = threading.Lock()

    def listen(self, ip: str, port: int, pick: Pick) -> None:
        """Forward connections to ``ip:port`` to ``pick()``; replaces an existing listener there."""
        require_loopback(ip)
        self.close(ip, port)

        conns: set[asyncio.StreamWriter] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            target = await asyncio.to_thread(pick)
            if target is None:
                writer.close()
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*target), 5)
            except (TimeoutError, OSError):
                writer.close()
                return
            ends = (writer, up_writer)
            conns.update(ends)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                conns.difference_update(ends)

        async def start() -> asyncio.AbstractServer:
            return await asyncio.start_server(handle, ip, port, reuse_address=True)

        server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        with self._lock:
            self._servers[(ip, port)] = server
            self._conns[(ip, port)] = conns

    def close(self, ip: str, port: int) -> None:
        with self._lock:
            server = self._servers.pop((ip, port), None)
            conns = self._conns.pop((ip, port), set())
        if server is not None:

            async def stop() -> None:
                server.close()
                for end in list(conns):  # the connections through it end too (server.close() leaves them)
                    end.close()
                try:
                    await asyncio.wait_for(server.wait_closed(), 2)
                except TimeoutError:
                    pass

            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)

    def listening(self) -> list[Backend]:
        with self._lock:
            return sorted(self._servers)

    def shutdown(self) -> None:
        for ip, port in self.listening():
            self.close(ip, port)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
