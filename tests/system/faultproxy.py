"""A small fault-injecting TCP proxy on 127.0.0.1 for the tests: it forwards to
a real server (the moto S3 server), and on some connections answers with an
HTTP 500 or 429 instead, answers slowly, or cuts the connection half-way.

Faults are drawn per connection from a seeded random generator, so a run is
repeatable in what it injects. HTTP clients keep connections alive, and the
cut connections make them open new ones, so faults keep coming."""

from __future__ import annotations

import random
import select
import socket
import threading
import time

ERROR_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
ERROR_429 = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/xml\r\nContent-Length: 88\r\n"
             b"Connection: close\r\n\r\n<Error><Code>SlowDown</Code><Message>Please reduce your rate.</Message></Error>\n")
SLOW_S = 0.5
CUT_AFTER_BYTES = 2048


class FaultProxy:
    def __init__(self, target_port: int, seed: int = 7, error_500: float = 0.1, error_429: float = 0.1,
                 slow: float = 0.1, cut: float = 0.1):
        self.target = ("127.0.0.1", target_port)
        self.random = random.Random(seed)
        self.odds = (("500", error_500), ("429", error_429), ("slow", slow), ("cut", cut))
        self.injected = {name: 0 for name, _ in self.odds}
        self.enabled = True
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def _draw(self) -> str | None:
        with self._lock:
            if not self.enabled:
                return None
            roll = self.random.random()
            for name, odds in self.odds:
                if roll < odds:
                    self.injected[name] += 1
                    return name
                roll -= odds
        return None

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, self._draw()), daemon=True).start()

    def _serve(self, client: socket.socket, fault: str | None) -> None:
        try:
            if fault in ("500", "429"):
                client.recv(65536)  # the request's start; the answer does not depend on it
                client.sendall(ERROR_500 if fault == "500" else ERROR_429)
                return
            upstream = socket.create_connection(self.target, timeout=10)
            try:
                self._pipe(client, upstream, fault)
            finally:
                upstream.close()
        except OSError:
            pass
        finally:
            client.close()

    def _pipe(self, client: socket.socket, upstream: socket.socket, fault: str | None) -> None:
        forwarded = 0
        ends = [client, upstream]
        while not self._stop.is_set():
            ready, _, _ = select.select(ends, [], [], 1.0)
            for source in ready:
                data = source.recv(65536)
                if not data:
                    return
                if fault == "slow":
                    time.sleep(SLOW_S)  # the fault itself: a slow network
                (upstream if source is client else client).sendall(data)
                forwarded += len(data)
                if fault == "cut" and forwarded > CUT_AFTER_BYTES:
                    return
