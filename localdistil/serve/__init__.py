"""The OpenAI-compatible HTTP server: distilled functions behind ``/v1/chat/completions``.

    localdistil serve runs/extract_order mult=runs/three_digit_multiply --base smollm2-135m

Each module does one job:

- :mod:`~localdistil.serve.protocol`: the request and response bodies and the error shape;
- :mod:`~localdistil.serve.signature`: a manifest's rendered signature -> its parameters;
- :mod:`~localdistil.serve.functions`: a request's arguments -> checked, bound, and the prompt
  dispatch would render;
- :mod:`~localdistil.serve.schemas`: request schemas compared with an adapter's, tool unions;
- :mod:`~localdistil.serve.served`: what is served, by name, on which engine;
- :mod:`~localdistil.serve.completions`: a request -> a plan -> the answer in OpenAI's shape;
- :mod:`~localdistil.serve.batcher`: concurrent requests decoded in one engine call;
- :mod:`~localdistil.serve.app`: the FastAPI app (:func:`create_app`);
- :mod:`~localdistil.serve.server`: :func:`serve`, under uvicorn.

The web stack (FastAPI, Starlette, uvicorn) is imported by :mod:`~localdistil.serve.app` only,
and ``create_app`` is looked up lazily here, so importing this package does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localdistil.serve.functions import ArgumentError, FunctionParameters, call_prompt
from localdistil.serve.protocol import APIError
from localdistil.serve.served import ServedModel, load_served
from localdistil.serve.server import serve

if TYPE_CHECKING:
    from localdistil.serve.app import create_app

__all__ = [
    "APIError",
    "ArgumentError",
    "FunctionParameters",
    "ServedModel",
    "call_prompt",
    "create_app",
    "load_served",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from localdistil.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
