"""A TCP relay on loopback that timestamps every byte it forwards, each way.

Benches put it between clients and the coordinator's gRPC port: gRPC runs unencrypted on
loopback, so what the relay sees is exactly what a network would carry above TCP. `up` holds
(unix time, bytes) for each piece the clients sent, `down` for each piece they were sent,
stamped once the piece is handed to the receiver's socket.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress

RELAY_READ_BYTES = 65536
"""The most the relay reads at once: one piece of what it timestamps."""


class Relay:
    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.up: list[tuple[float, int]] = []
        self.down: list[tuple[float, int]] = []
        self.num_connections = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name=f"relay-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._upstream, timeout=10.0)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            for sock in (downstream, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    downstream.close()
                    upstream.close()
                    return
                self._sockets += [downstream, upstream]
                self.num_connections += 1
            for source, sink, log in (
                (downstream, upstream, self.up),
                (upstream, downstream, self.down),
            ):
                threading.Thread(
                    target=_pump, args=(source, sink, log), name="relay-pump", daemon=True
                ).start()

    def snapshot(self) -> dict[str, int]:
        """Bytes forwarded so far, each way."""
        return {
            "to_coordinator": sum(n for _, n in list(self.up)),
            "to_clients": sum(n for _, n in list(self.down)),
        }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        # `shutdown` wakes the threads blocked in `accept` and `recv`; `close` alone does not.
        for sock in (self._listener, *sockets):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _pump(source: socket.socket, sink: socket.socket, log: list[tuple[float, int]]) -> None:
    try:
        while data := source.recv(RELAY_READ_BYTES):
            sink.sendall(data)
            log.append((time.time(), len(data)))
    except OSError:
        pass
    finally:
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
