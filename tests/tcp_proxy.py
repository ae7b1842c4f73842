"""A TCP proxy on 127.0.0.1 that a test can cut, restore or freeze: an outage seen by one process only.

``cut`` is a server that went away (connections reset, new ones refused). ``freeze`` is a flow dropped by a NAT
or load balancer: the established connections stay open but carry nothing more in either direction - no
reset, no close, so only a timeout or an unanswered health check on the client's side can notice. Connections
opened after a freeze are accepted and forwarded (a new flow gets a new NAT mapping), unless the freeze also
covers them (``freeze(new_connections=False)``: a black hole behind a listening port).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from tests.net import free_port


class _Flow:
    """One proxied connection: its two sockets and whether it forwards."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.flowing.set()  # wakes a frozen pipe, which then sees the flow closed
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._flows: set[_Flow] = set()
        self._freeze_new = False
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones, like a server that went away."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave it accepting.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for flow in self._flows:
                flow.close()
            self._flows.clear()

    def freeze(self, *, new_connections: bool = True) -> None:
        """Stop forwarding on every open connection, both ways, without closing any; with ``new_connections``
        false, connections accepted from now on are frozen from their start too. Bytes sent meanwhile wait in
        the proxy (and the kernels' buffers) until :meth:`thaw`."""
        with self._lock:
            self._freeze_new = not new_connections
            for flow in self._flows:
                flow.flowing.clear()

    def thaw(self) -> None:
        """Forward again on every connection, frozen ones included, and on new ones."""
        with self._lock:
            self._freeze_new = False
            for flow in self._flows:
                flow.flowing.set()

    def frozen_upstream_ports(self) -> set[int]:
        """Local ports of the proxy's connections to the target that are frozen: how the target (``CLIENT LIST``
        on Redis) names the clients it still believes connected."""
        with self._lock:
            ports = set()
            for flow in self._flows:
                if not flow.flowing.is_set() and not flow.closed:
                    with contextlib.suppress(OSError):
                        ports.add(flow.sockets[1].getsockname()[1])
            return ports

    def url(self, target_url: str) -> str:
        """``target_url`` (a ``redis://`` URL of the target) through this proxy."""
        return urlsplit(target_url)._replace(netloc=f"127.0.0.1:{self.port}").geturl()

    def holds_blocked_brpop(self, redis_client: Any) -> bool:
        """Whether Redis (the target, seen through ``redis_client``) still holds a BRPOP of a frozen connection: a
        message pushed meanwhile would be popped for a client that never gets it (kombu holds a message
        unacknowledged only once it has read it)."""
        ports = self.frozen_upstream_ports()
        clients: list[dict[str, str]] = redis_client.client_list()
        return any(int(c["addr"].rsplit(":", 1)[1]) in ports and "b" in c["flags"] for c in clients)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            flow = _Flow(client, upstream)
            with self._lock:
                if self._freeze_new:
                    flow.flowing.clear()
                self._flows.add(flow)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(flow, source, sink), daemon=True).start()

    @staticmethod
    def _pipe(flow: _Flow, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            # A chunk read while frozen is held, not dropped: it goes on after a thaw.
            while (data := source.recv(65536)) and flow.flowing.wait() and not flow.closed:
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
