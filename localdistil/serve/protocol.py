"""The wire format: OpenAI's chat completions API as Pydantic models, and its error shape.

Shapes follow OpenAI's API reference and vLLM's OpenAI-compatible server, so that the ``openai``
client, instructor and anything else written for them work unchanged.

A request field that OpenAI defines is accepted. Those that cannot change a grammar-constrained
answer are accepted and ignored (``user``, ``metadata``, ``store``, ``service_tier``,
``frequency_penalty``, ``presence_penalty``, ``stop``: the answer ends where its JSON ends, ...);
those this server cannot honour are refused with a 400 that says so (``n`` > 1, ``logprobs``,
``logit_bias``, ``top_p`` < 1, audio, the legacy ``functions``). A field OpenAI does not define
is refused with a 400 naming it, as OpenAI does, so that a typo is not silently ignored. The one
addition is ``arguments``: a distilled function's arguments as a JSON object, sent by the
``openai`` client as ``extra_body={"arguments": {...}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# -- errors ------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

    Attributes:
        status: the HTTP status.
        message: what is wrong and how to fix it.
        type: OpenAI's error type (``invalid_request_error``, ``authentication_error``, ...).
        param: the request field at fault, or ``None``.
        code: a machine-readable code (``model_not_found``, ``invalid_api_key``, ...), or ``None``.
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# -- requests ----------------------------------------------------------------------------------


class _Open(BaseModel):
    """A part of a request whose unknown keys are kept (clients add their own)."""

    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    """One message of the conversation. ``content`` is text, or a list of content parts of
    which only the ``text`` ones are read."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class JsonSchemaFormat(_Open):
    """``response_format.json_schema``: the schema the answer must follow."""

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    """``response_format``: ``text``, ``json_object`` (optionally with a ``schema``, as some
    OpenAI-compatible servers accept) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class FunctionDefinition(_Open):
    """A tool's function: its name and the JSON schema of its arguments."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    """One entry of ``tools``."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    """``tool_choice`` forcing one function."""

    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    arguments: dict[str, Any] | None = Field(
        default=None, description="the distilled function's arguments (localdistil's addition)")
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, int] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    @property
    def token_cap(self) -> int | None:
        """The client's cap on the answer's tokens (``max_completion_tokens`` first)."""
        return self.max_completion_tokens or self.max_tokens


# -- responses ---------------------------------------------------------------------------------


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """The answer of a non-streaming request."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int = 0
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streaming answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    """One served model in ``GET /v1/models`` (vLLM's ``root``/``parent`` included)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "localdistil"
    root: str
    parent: str | None = None
    base_model: str
    adapter: str | None = None
    function: str | None = Field(default=None, description="the distilled function's signature")
    fingerprint: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
