"""Redis servers for tests.

* :func:`redis_url` yields a URL: ``$REDIS_URL`` if set, else ``redis://127.0.0.1:6379`` if that
  answers PING, else a private ``redis-server`` on a free port, stopped afterwards. A shared server
  may be used by other tests at the same time: use unique key and channel prefixes.
* :class:`RedisServer` is a dedicated ``redis-server`` on a fixed free port that a test can kill,
  pause and restart (outage tests), optionally with an always-fsynced append-only file so that
  data written before a kill survives the restart.
* :class:`LossyProxy` sits between a client and Redis and can swallow the replies of the next
  request and then drop the connection: the request was executed, the client cannot know it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

import pytest
import redis

DEFAULT_URL = "redis://127.0.0.1:6379"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_ping(url: str, timeout_s: float = 0.5) -> bool:
    """Whether the Redis at ``url`` answers PING within ``timeout_s``."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class RedisServer:
    """A ``redis-server`` subprocess on one port for its whole life, even across restarts."""

    def __init__(
        self, port: int | None = None, *, persistent: bool = False, args: tuple[str, ...] = ()
    ) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.args = args  # more redis-server arguments, e.g. ("--requirepass", "pw")
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def ping_url(self) -> str:
        """The URL with the password given by ``--requirepass`` in :attr:`args`, if any."""
        if "--requirepass" in self.args:
            password = self.args[self.args.index("--requirepass") + 1]
            return f"redis://:{password}@127.0.0.1:{self.port}"
        return self.url

    def _argv(self) -> list[str]:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed and no Redis answers on 127.0.0.1:6379")
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", self._dir.name, "--daemonize", "no"]
        if self.persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return [*argv, *self.args]

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self._proc is not None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self._proc = subprocess.Popen(
            self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers_ping(self.ping_url, 0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown save) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # in case it was paused
            proc.kill()
            proc.wait(timeout=START_TIMEOUT_S)

    def restart(self) -> None:
        """Kill the server if it runs, then start it again on the same port."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted, nothing is answered."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.kill()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextmanager
def redis_url() -> Iterator[str]:
    """``$REDIS_URL``, else the local Redis on 6379 if it answers, else a private server."""
    env = os.environ.get("REDIS_URL")
    if env:
        yield env
    elif answers_ping(DEFAULT_URL):
        yield DEFAULT_URL
    else:
        with RedisServer() as server:
            yield server.url


class LossyProxy:
    """A TCP proxy in front of ``127.0.0.1:upstream_port`` that can lose replies.

    After :meth:`lose_next_replies`, the next request is forwarded and executed, its replies are
    read until Redis goes quiet and discarded, and the client's connection is closed.
    """

    def __init__(self, upstream_port: int, settle_s: float = 0.2) -> None:
        self.upstream_port = upstream_port
        self.settle_s = settle_s
        self.port = 0
        self._armed = threading.Event()
        self._listener: socket.socket | None = None
        self._closing = False

    @property
    def url(self) -> str:
        """The proxy's URL."""
        return f"redis://127.0.0.1:{self.port}"

    def lose_next_replies(self) -> None:
        """Swallow the replies to the next request and drop that connection (once)."""
        self._armed.set()

    def start(self) -> None:
        """Listen on a free port."""
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop accepting connections."""
        self._closing = True
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
        with suppress(OSError):
            while data := upstream.recv(65536):
                if not self._armed.is_set():
                    client.sendall(data)
                    continue
                self._armed.clear()
                upstream.settimeout(self.settle_s)
                with suppress(TimeoutError):
                    while upstream.recv(65536):  # let Redis finish the whole request
                        pass
                break
        for s in (upstream, client):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def __enter__(self) -> LossyProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stream_entries(client: redis.Redis, key: str) -> list[tuple[str, bytes]]:
    """Every ``(id, data)`` entry of a stream written by the Redis sink."""
    entries: Any = client.xrange(key)
    return [(entry_id.decode(), fields[b"data"]) for entry_id, fields in entries]
