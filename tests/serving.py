"""Run an ASGI app (the localdistil server) on 127.0.0.1 at a free port, in a background thread,
for the tests that talk to it over HTTP with real clients.

    from serving import running                     # tests/ is on sys.path under pytest
    with running(create_app(...)) as url:           # "http://127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def running(app: Any, *, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn until the block ends; yields its base URL once ``/health``
    answers 200. Fails if it does not start in ``start_timeout_s`` or does not stop in 15 s."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _healthy(url):
            assert time.monotonic() < deadline, f"no server after {start_timeout_s} s"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
    assert not thread.is_alive(), "the server did not shut down"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
