"""``localdistil serve``: load what is served, then run the app under uvicorn until interrupted."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence

from localdistil.errors import LocaldistilError

#: What to install when the web stack is missing.
INSTALL = "pip install 'fastapi>=0.163' 'uvicorn>=0.54'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def serve(targets: Sequence[str], *, base: Sequence[str] | str | None = None,
          host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch: int = 8, batch_wait_ms: float = 5.0, log_level: str = "info") -> None:
    """Serve distilled functions (and base models) behind OpenAI's chat completions API.

    Args:
        targets: run or adapter directories, each optionally ``name=DIR``; the default name is
            the manifest's function name.
        base: base models served for schema-constrained generation (alias, hub id, directory or
            ``.gguf``), each optionally ``name=REF``.
        host: the address to bind (loopback by default; another one without ``api_key`` is
            warned about, as anyone who can reach it may use the models).
        port: the port.
        api_key: the bearer token every request but ``/health`` must carry.
        max_batch: the most concurrent requests for one model decoded together.
        batch_wait_ms: how long a request waits for others to batch with.
        log_level: uvicorn's log level.

    Raises:
        LocaldistilError: nothing to serve, a name served twice, or the web stack is missing.
        AdapterError, ModelError: an adapter or model that cannot be loaded.
    """
    if max_batch < 1 or batch_wait_ms < 0:
        raise LocaldistilError(f"serve: --max-batch must be at least 1 and --batch-wait-ms at "
                               f"least 0 (got {max_batch} and {batch_wait_ms}).")
    try:
        import uvicorn

        from localdistil.serve.app import create_app
    except ImportError as error:
        raise LocaldistilError(f"serve needs FastAPI and uvicorn ({error}): {INSTALL}") from error
    from localdistil.serve.batcher import engine_thread
    from localdistil.serve.served import load_served

    if not is_loopback(host) and not api_key:
        print(f"warning: serving on {host} without --api-key: anyone who can reach this "
              "address can use the models. Pass --api-key KEY, or bind 127.0.0.1.",
              file=sys.stderr)
    # loaded in the thread that will decode with them (see engine_thread)
    served = engine_thread().submit(load_served, targets, base=base).result()
    app = create_app(served, api_key=api_key, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    for model in served:
        print(f"serving {model.name:<24} {model.kind} {model.reference}", file=sys.stderr)
    print(f"OpenAI-compatible API at http://{host}:{port}/v1", file=sys.stderr)
    logger = logging.getLogger("localdistil.serve")  # uvicorn configures only its own loggers
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(log_level.upper())
    uvicorn.run(app, host=host, port=port, log_level=log_level)
