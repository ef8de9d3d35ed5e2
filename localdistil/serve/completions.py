"""A chat completion request -> what to decode (:class:`Plan`) -> the answer in OpenAI's shape.

:func:`plan` decides everything about a request before any generation: the prompt's token ids,
the schema the answer is decoded under, the token budget and sampling, and whether the answer is
presented as the message's content or as a tool call. Every client error is found here and is a
400 that says what to change, so that a batch only ever holds requests that can be answered.

- **An adapter** answers its function: the call's arguments come from the body's
  ``arguments``, else the last user message (a JSON object of the parameters, or the text itself
  for a function of one string parameter); the prompt is rendered as training rendered it
  (:func:`~localdistil.serve.functions.call_prompt`); the answer is decoded under the adapter's
  own schema. A ``response_format`` schema or a tool's ``parameters`` must be that schema up to
  spelling (:mod:`~localdistil.serve.schemas`), or the request is a 400 saying what differs.
- **A tool-set adapter** (its schema is a union over tools:
  :func:`~localdistil.records.record.toolset_schema`) answers the last user message as its
  ``user_message``, rendered as training rendered it, with one or several calls: the message's
  ``tool_calls`` and ``finish_reason: "tool_calls"``. The request's ``tools`` (or a named
  ``tool_choice``) narrow the grammar to the tools it names (:func:`~localdistil.serve.schemas.
  restrict_toolset`); their parameter schemas are not compared with the adapter's, as clients
  (functioncalming) send their own variants of them.
- **A base model** answers the conversation under the schema the request gives:
  ``response_format`` ``json_schema``, ``json_object`` (any JSON object), or ``tools`` with
  ``tool_choice`` ``"required"``, ``"auto"`` or a named function (a grammar cannot leave the
  model free to answer in prose instead, so ``"auto"`` means a tool call here).

Decoding is greedy unless ``temperature`` > 0, which samples (``seed`` makes it repeatable).
The budget is the adapter's own (from its training answers), or :data:`BASE_BUDGET` for a base
model, capped by ``max_tokens``/``max_completion_tokens``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from localdistil.errors import LocaldistilError
from localdistil.inference.engine import Outcome
from localdistil.records.record import output_calls, toolset_info
from localdistil.serve.batcher import Decode
from localdistil.serve.functions import (
    ArgumentError,
    call_prompt,
    message_text,
    request_arguments,
    request_repairs,
)
from localdistil.serve.protocol import (
    APIError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    FunctionCall,
    ResponseMessage,
    ToolCall,
    Usage,
)
from localdistil.serve.schemas import difference, restrict_toolset, tool_union
from localdistil.serve.served import Loaded, ServedModel

#: A base model's token budget when the request sets none.
BASE_BUDGET = 512
#: Held while a prompt is tokenised: a fast tokenizer shared by worker threads is safe only as
#: long as none changes its settings, and rendering is short next to generation.
_RENDERING = threading.Lock()
#: Characters per streamed chunk (the engine has no token callback: the whole answer is
#: generated first, then streamed in pieces).
CHUNK_CHARS = 16


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to decode for one request, and how to present the answer.

    Attributes:
        prompt: the prompt's token ids.
        decode: the engine, schema, budget and sampling settings.
        tool: the tool the answer is a call of; ``None`` for content.
        union: the answer is ``{"name", "arguments"}`` (a choice among several tools).
        fingerprint: reported as ``system_fingerprint``.
        toolset: the answer is a tool-set adapter's: one call or ``{"tool_calls": [...]}``.
    """

    prompt: list[int]
    decode: Decode
    tool: str | None = None
    union: bool = False
    fingerprint: str | None = None
    toolset: bool = False


def plan(served: ServedModel, request: ChatCompletionRequest, *,
         max_prompt_tokens: int | None = None) -> Plan:
    """Everything about ``request`` before generation (blocking: tokenises; may load a
    retrained adapter). See the module's docstring.

    Raises:
        APIError: a 400 saying what to change.
    """
    try:
        return _plan(served, request, max_prompt_tokens)
    except RecursionError:  # JSON or a schema nested deeper than Python recurses
        raise APIError(400, "the request nests too deeply; flatten the message or the schema",
                       param="messages") from None


def _plan(served: ServedModel, request: ChatCompletionRequest,
          max_prompt_tokens: int | None) -> Plan:
    _refuse_unsupported(request)
    loaded = served.current()
    if loaded.function is not None:
        prompt, schema, tool, union = _plan_adapter(served, loaded, request)
        budget = loaded.engine.default_budget or BASE_BUDGET
        if request.token_cap is not None:
            budget = min(budget, request.token_cap)
    else:
        prompt, schema, tool, union = _plan_base(served, loaded, request)
        budget = request.token_cap or BASE_BUDGET
        try:  # a schema the grammar cannot express is the client's to fix
            loaded.engine.grammar(schema)
        except (LocaldistilError, ValueError, TypeError) as error:
            raise APIError(400, f"cannot decode under this schema: {error}",
                           param="response_format" if tool is None else "tools") from None
    _check_length(prompt, budget, loaded, max_prompt_tokens)
    temperature = request.temperature or 0.0
    decode = Decode(loaded.engine, schema, budget, temperature,
                    request.seed if temperature > 0 else None)
    toolset = loaded.function is not None and toolset_info(loaded.schema) is not None
    return Plan(prompt, decode, tool, union, served.fingerprint, toolset)


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    refusals = [
        (request.n is not None and request.n > 1, "n",
         "n > 1 is not supported: send the request again (with temperature > 0 and another "
         "seed) for another answer"),
        (bool(request.logprobs) or request.top_logprobs is not None, "logprobs",
         "logprobs are not supported"),
        (bool(request.logit_bias), "logit_bias", "logit_bias is not supported: the output "
         "grammar decides which tokens may come next"),
        (request.top_p is not None and request.top_p < 1, "top_p",
         "top_p < 1 is not supported; use temperature"),
        (request.audio is not None or "audio" in (request.modalities or ()), "modalities",
         "audio is not supported"),
        (request.functions is not None or request.function_call is not None, "functions",
         "the legacy `functions` parameter is not supported: pass `tools`"),
        (request.web_search_options is not None, "web_search_options",
         "web search is not supported"),
    ]
    for refused, param, message in refusals:
        if refused:
            raise APIError(400, message, param=param)


def _plan_adapter(served: ServedModel, loaded: Loaded, request: ChatCompletionRequest
                  ) -> tuple[list[int], dict[str, Any], str | None, bool]:
    function, schema = loaded.function, loaded.schema
    if function is None or schema is None:  # the caller routes base models elsewhere
        raise ValueError(f"{served.name} serves no function")
    is_toolset = toolset_info(schema) is not None
    if is_toolset:  # a tool set: the answer is tool calls
        tools = _tools(request)
        forced = _forced(request, tools) if tools else None
        try:
            schema = restrict_toolset(schema, [forced] if forced else list(tools))
        except ValueError as error:
            raise APIError(400, f"{served.name}: {error}", param="tools") from None
        tool: str | None = ""
    else:
        tool = _adapter_tool(served, schema, request)
    if tool is None:
        _check_response_format(served, schema, request)
    manifest = loaded.engine.manifest
    repairs = []  # a retry's refused calls, fed back where the tool set learnt from such turns
    if is_toolset and manifest is not None and manifest.repair_examples:
        repairs = request_repairs(request.messages)
    try:
        arguments = request_arguments(function, request.messages, request.arguments)
        with _RENDERING:
            prompt = call_prompt(loaded.engine, function, arguments, repairs)
    except ArgumentError as error:
        raise APIError(400, f"{served.name}: {error}", param=error.param) from None
    except (TypeError, ValueError) as error:  # a value with no JSON rendering
        raise APIError(400, f"{served.name}: {error}", param="arguments") from None
    return prompt, schema, tool, False


def _check_response_format(served: ServedModel, schema: dict[str, Any],
                           request: ChatCompletionRequest) -> None:
    given = _format_schema(request)
    if given is None:
        return
    differs = difference(schema, given)
    if differs:
        raise APIError(400, f"response_format asks for another schema than the one "
                       f"{served.name} was trained to answer: {differs}. Leave response_format "
                       f"out, or send {served.name}'s output schema (GET /v1/models names the "
                       "function).", param="response_format")


def _format_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    """The schema ``response_format`` asks for, ``{}`` for ``json_object``, ``None`` for none."""
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return fmt.schema_
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(400, "response_format json_schema needs json_schema.schema",
                       param="response_format")
    return fmt.json_schema.schema_


def _tools(request: ChatCompletionRequest) -> dict[str, dict[str, Any]]:
    """The request's tools (name -> parameters schema), unless ``tool_choice`` is ``"none"``."""
    if not request.tools or request.tool_choice == "none":
        return {}
    return {tool.function.name: tool.function.parameters or {"type": "object", "properties": {}}
            for tool in request.tools}


def _forced(request: ChatCompletionRequest, tools: dict[str, dict[str, Any]]) -> str | None:
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        return None
    if choice.function.name not in tools:
        raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not among "
                       f"the tools ({', '.join(tools) or 'none'})", param="tool_choice")
    return choice.function.name


def _adapter_tool(served: ServedModel, schema: dict[str, Any],
                  request: ChatCompletionRequest) -> str | None:
    """The tool whose call the adapter's answer is presented as (its parameters must be the
    adapter's schema), or ``None``."""
    tools = _tools(request)
    if not tools:
        return None
    forced = _forced(request, tools)
    candidates = [forced] if forced else list(tools)
    differences = {}
    for name in candidates:
        differs = difference(schema, tools[name])
        if differs is None:
            return name
        differences[name] = differs
    name, differs = next(iter(differences.items()))
    raise APIError(400, f"{served.name} answers one schema, and the parameters of the tool "
                   f"{name!r} are another: {differs}", param="tools")


def _plan_base(served: ServedModel, loaded: Loaded, request: ChatCompletionRequest
               ) -> tuple[list[int], dict[str, Any], str | None, bool]:
    if request.arguments is not None:
        raise APIError(400, f"{served.name} is a base model: it answers the messages, not "
                       "`arguments`", param="arguments")
    tools = _tools(request)
    forced = _forced(request, tools) if tools else None
    if forced or len(tools) == 1:
        tool = forced or next(iter(tools))
        schema, union = tools[tool], False
    elif tools:
        tool, schema, union = "", tool_union(tools), True
    else:
        tool, union = None, False
        if request.response_format is None or request.response_format.type == "text":
            raise APIError(400, f"{served.name} is a base model, which answers under a JSON "
                           "schema: pass response_format={'type': 'json_schema', ...}, "
                           "{'type': 'json_object'} or tools", param="response_format")
        schema = _format_schema(request) or {"type": "object"}
    try:
        messages = [_chat_message(message) for message in request.messages]
    except ArgumentError as error:
        raise APIError(400, str(error), param=error.param) from None
    with _RENDERING:
        prompt = loaded.engine.encode(messages)
    return prompt, schema, tool, union


def _chat_message(message: Any) -> dict[str, str]:
    """A request message as the chat template reads it: a role and text."""
    role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
    text = message_text(message.content)
    if not text and message.tool_calls:
        text = json.dumps([call.get("function", call) for call in message.tool_calls],
                          separators=(",", ":"))
    return {"role": role, "content": text}


def _check_length(prompt: list[int], budget: int, loaded: Loaded,
                  max_prompt_tokens: int | None) -> None:
    tokens = len(prompt)
    if max_prompt_tokens is not None and tokens > max_prompt_tokens:
        raise APIError(400, f"the prompt is {tokens} tokens; the limit is {max_prompt_tokens} "
                       "(the server's max_prompt_tokens). Shorten the messages.",
                       param="messages", code="context_length_exceeded")
    context = loaded.context_length
    if context is not None and tokens + budget > context:
        raise APIError(400, f"the prompt is {tokens} tokens and the answer may take {budget} "
                       f"more, but the model's context is {context} tokens: the limit is "
                       f"{max(context - budget, 0)} prompt tokens with this budget. Shorten the "
                       "messages, or lower max_tokens.",
                       param="messages", code="context_length_exceeded")


# -- answers -----------------------------------------------------------------------------------


def _tool_calls(plan: Plan, outcome: Outcome) -> list[tuple[str, str]]:
    """The (name, arguments text) of each call of a tool-call answer: several for a tool set."""
    if not plan.toolset:
        return [_tool_call(plan, outcome)]
    if not outcome.ok:  # ran out of tokens: the partial text, as one call's arguments
        return [("", outcome.text)]
    return [(str(call["name"]), json.dumps(call["arguments"], ensure_ascii=False,
                                           separators=(",", ":")))
            for call in output_calls(json.loads(outcome.text))]


def _tool_call(plan: Plan, outcome: Outcome) -> tuple[str, str]:
    """The (name, arguments text) of a tool-call answer."""
    if not plan.union:
        return plan.tool or "", outcome.text
    prefix = '{"name":'
    try:  # the arguments' text as generated: the canonical JSON, kept byte for byte
        name, end = json.JSONDecoder().raw_decode(outcome.text, len(prefix))
        rest = outcome.text[end:]
        arguments = rest[len(',"arguments":'):]
        if outcome.ok:
            arguments = arguments[:-1]  # the closing brace of the call
        return str(name), arguments
    except ValueError:
        return "", outcome.text


def finish_reason(plan: Plan, outcome: Outcome) -> str:
    """``"length"`` when the budget ran out, ``"tool_calls"`` for a tool call, else ``"stop"``."""
    if outcome.status == "budget":
        return "length"
    return "stop" if plan.tool is None else "tool_calls"


def _usage(outcome: Outcome) -> Usage:
    return Usage(prompt_tokens=outcome.prompt_tokens,
                 completion_tokens=outcome.completion_tokens,
                 total_tokens=outcome.prompt_tokens + outcome.completion_tokens)


def completion(model: str, plan: Plan, outcome: Outcome) -> ChatCompletion:
    """The ``chat.completion`` answering one request."""
    if plan.tool is None:
        message = ResponseMessage(content=outcome.text)
    else:
        message = ResponseMessage(tool_calls=[
            ToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                     function=FunctionCall(name=name, arguments=arguments))
            for name, arguments in _tool_calls(plan, outcome)])
    return ChatCompletion(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()),
                          model=model, system_fingerprint=plan.fingerprint, usage=_usage(outcome),
                          choices=[Choice(message=message,
                                          finish_reason=finish_reason(plan, outcome))])


def chunks(model: str, plan: Plan, outcome: Outcome, *, include_usage: bool = False
           ) -> Iterator[str]:
    """The server-sent events of a streaming answer: ``chat.completion.chunk`` objects (the
    role first, then the text in pieces of :data:`CHUNK_CHARS` characters, then the finish
    reason, then the usage if asked for), then ``data: [DONE]``."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model,
            "system_fingerprint": plan.fingerprint}

    def event(delta: Delta, finish: str | None = None) -> str:
        chunk = ChatCompletionChunk(**base, choices=[ChunkChoice(delta=delta,
                                                                 finish_reason=finish)])
        body = chunk.model_dump(mode="json", exclude={"usage"})
        body["choices"][0]["delta"] = delta.model_dump(mode="json", exclude_none=True)
        if include_usage:
            body["usage"] = None  # as OpenAI does: usage comes in a last chunk of its own
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    if plan.tool is None:
        text = outcome.text
        yield event(Delta(role="assistant", content=""))
        for start in range(0, len(text), CHUNK_CHARS):
            yield event(Delta(content=text[start:start + CHUNK_CHARS]))
    else:
        for index, (name, text) in enumerate(_tool_calls(plan, outcome)):
            yield event(Delta(role="assistant" if index == 0 else None, tool_calls=[
                DeltaToolCall(index=index, id=f"call_{uuid.uuid4().hex[:24]}", type="function",
                              function=DeltaFunction(name=name, arguments=""))]))
            for start in range(0, len(text), CHUNK_CHARS):
                yield event(Delta(tool_calls=[DeltaToolCall(
                    index=index,
                    function=DeltaFunction(arguments=text[start:start + CHUNK_CHARS]))]))
    yield event(Delta(), finish_reason(plan, outcome))
    if include_usage:
        usage = ChatCompletionChunk(**base, choices=[], usage=_usage(outcome))
        yield f"data: {usage.model_dump_json()}\n\n"
    yield "data: [DONE]\n\n"
