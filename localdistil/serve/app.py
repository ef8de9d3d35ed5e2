"""The FastAPI application: routes, the API key and body-size guard, and OpenAI-shaped errors.

    POST /v1/chat/completions   answers (see :mod:`localdistil.serve.completions`)
    GET  /v1/models             what is served: names, base models, adapter directories
    GET  /health                200 while the server answers (no API key needed)

Every error is answered in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
so clients raise their usual exceptions: a body that is not JSON, a field of the wrong type or an
unknown field is a 400 (not FastAPI's 422), an unknown model a 404 with ``model_not_found``, a
missing or wrong API key a 401, a body over ``max_body_bytes`` a 413. Bad input never takes the
server down; a request that fails for a reason of the server's own is a 500 in the same shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from localdistil.serve.batcher import Batcher
from localdistil.serve.completions import chunks, completion, plan
from localdistil.serve.protocol import APIError, ChatCompletionRequest, ModelCard, ModelList
from localdistil.serve.served import ServedModel

log = logging.getLogger(__name__)

#: The largest request body accepted, in bytes (a 413 beyond).
MAX_BODY_BYTES = 1 << 20
#: Paths answered without the API key.
OPEN_PATHS = frozenset({"/health"})


def create_app(served: Sequence[ServedModel], *, api_key: str | None = None,
               max_batch: int = 8, batch_wait_ms: float = 5.0,
               max_body_bytes: int = MAX_BODY_BYTES,
               max_prompt_tokens: int | None = None) -> FastAPI:
    """The OpenAI-compatible app serving ``served`` (from
    :func:`~localdistil.serve.served.load_served`).

    Args:
        served: the models, by name.
        api_key: when set, every request but ``/health`` needs ``Authorization: Bearer KEY``.
        max_batch: the most concurrent requests for one model decoded in one batch.
        batch_wait_ms: how long a request waits for others to batch with.
        max_body_bytes: the largest request body accepted.
        max_prompt_tokens: the longest prompt accepted, in tokens (also bounded by the model's
            context less the answer's budget).

    The batchers are reachable as ``app.state.batchers[name]`` (their ``calls`` count engine
    calls); at shutdown each model's count of requests and batches is logged
    (``localdistil.serve.app``, INFO).
    """
    models = {model.name: model for model in served}
    batchers = {name: Batcher(max_batch=max_batch, wait_s=batch_wait_ms / 1000)
                for name in models}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for name, batcher in batchers.items():
            await batcher.close()
            if batcher.calls:
                log.info("%s: %d requests answered in %d batches (mean batch %.1f)", name,
                         batcher.items, batcher.calls, batcher.items / batcher.calls)

    app = FastAPI(title="localdistil", summary="Distilled functions behind OpenAI's API",
                  lifespan=lifespan)
    app.state.served = models
    app.state.batchers = batchers
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        cards = await asyncio.to_thread(lambda: [_card(model) for model in models.values()])
        return ModelList(data=cards)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: ChatCompletionRequest) -> Any:
        served_model = models.get(request.model)
        if served_model is None:
            raise APIError(404, f"The model {request.model!r} does not exist on this server; it "
                           f"serves {', '.join(sorted(models))}.", param="model",
                           code="model_not_found")
        decided = await asyncio.to_thread(plan, served_model, request,
                                          max_prompt_tokens=max_prompt_tokens)
        outcome = await batchers[served_model.name].submit(decided.prompt, decided.decode)
        if outcome.status == "invalid":  # the grammar admitted text that is not JSON: a bug
            raise APIError(500, f"the answer is not valid JSON ({outcome.error}): "
                           f"{outcome.text[:200]}", type="server_error")
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(chunks(request.model, decided, outcome,
                                            include_usage=include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return JSONResponse(completion(request.model, decided, outcome).model_dump(mode="json"))

    return app


def _card(model: ServedModel) -> ModelCard:
    loaded = model.current()
    manifest = loaded.engine.manifest
    adapter = model.adapter
    return ModelCard(id=model.name, created=int(loaded.engine.path.stat().st_mtime),
                     root=adapter or model.reference,
                     parent=model.base_model if adapter else None,
                     base_model=model.base_model, adapter=adapter,
                     function=None if manifest is None else manifest.signature,
                     fingerprint=model.fingerprint)


# -- errors ------------------------------------------------------------------------------------


def _error(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Any, error: APIError) -> JSONResponse:
        return _error(error)

    async def invalid_request(request: Any, error: RequestValidationError) -> JSONResponse:
        return _error(validation_error(error.errors()))

    async def http_error(request: Any, error: StarletteHTTPException) -> JSONResponse:
        return _error(APIError(error.status_code, str(error.detail),
                               code="not_found" if error.status_code == 404 else None))

    async def server_error(request: Any, error: Exception) -> JSONResponse:
        log.exception("request failed", exc_info=error)
        return _error(APIError(500, f"the server failed to answer: {type(error).__name__}: "
                               f"{error}", type="server_error"))

    app.add_exception_handler(APIError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, server_error)


def validation_error(errors: Sequence[Any]) -> APIError:
    """A 400 in OpenAI's shape for FastAPI's validation errors (the first one, in words)."""
    first = dict(errors[0]) if errors else {"type": "", "loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    kind = first.get("type")
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", first.get("msg"))
        return APIError(400, f"The body is not valid JSON: {reason}.", code="invalid_json")
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return APIError(400, f"Missing required parameter: {param!r}.", param=param)
    where = f"{param}: " if param else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return APIError(400, f"Invalid request: {where}{first.get('msg')}{more}.", param=param)


class _Guard:
    """ASGI middleware run before a body is read: the API key (401) and the body size (413).

    An over-long body is refused without reading it when ``Content-Length`` says so, else as
    soon as the bytes read pass the limit; a body within it is replayed to the app.
    """

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if self.expected is not None and scope.get("path") not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await self._refuse(scope, receive, send, APIError(
                    401, "Incorrect or missing API key: send `Authorization: Bearer <key>` "
                    "with the key the server was started with (--api-key).",
                    code="invalid_api_key", type="authentication_error"))
                return
        too_large = APIError(413, f"The request body is larger than {self.max_body_bytes} "
                             "bytes.", code="request_too_large")
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await self._refuse(scope, receive, send, too_large)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away before sending its body
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_body_bytes:
                await self._refuse(scope, receive, send, too_large)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(parts), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: dict[str, Any], receive: Any, send: Any, error: APIError) -> None:
        await _error(error)(scope, receive, send)
