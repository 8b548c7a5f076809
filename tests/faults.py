"""A TCP proxy on loopback that can cut its connections, to break a session mid-transfer.

Stopping the server tests a dead server; cutting the wire in the middle of a FETCH response
is another failure (the server lives on, the client sees a truncated reply), and only a
proxy between the two produces it on demand.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from tests.conftest import free_port

BUFFER_BYTES = 64 * 1024


@dataclass
class CuttingProxy:
    """Forwards 127.0.0.1:`port` to the target. With `cut_after_bytes` set, the first
    connection that has carried that many bytes from the server is cut, once."""

    target_port: int
    cut_after_bytes: int | None = None
    port: int = field(default_factory=free_port)
    cuts: int = 0
    _listener: socket.socket | None = None
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        self.cut_all()

    def cut_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for each in sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                each.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _address = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, from_server: bool) -> None:
        carried = 0
        try:
            while data := source.recv(BUFFER_BYTES):
                target.sendall(data)
                carried += len(data)
                if from_server and self._should_cut(carried):
                    self.cut_all()
                    return
        except OSError:
            pass
        finally:
            for each in (source, target):
                with contextlib.suppress(OSError):
                    each.shutdown(socket.SHUT_RDWR)

    def _should_cut(self, carried: int) -> bool:
        with self._lock:
            if self.cut_after_bytes is None or carried < self.cut_after_bytes or self.cuts:
                return False
            self.cuts += 1
            return True
