"""A distilled function as the server knows it: from the manifest's signature alone.

The server has no Python function, only the adapter's manifest. :class:`FunctionParameters`
recovers the parameters from ``manifest.signature`` (``def triage(title: str, severity: int = 2)
-> Ticket``; see :mod:`~localdistil.serve.signature`): names and order, defaults (Python
literals) and simple annotations mapped to JSON types. A request's arguments are checked against
them (a 400 names the parameter at fault), defaults are applied, and the call is rendered in the
signature's order, as :meth:`localdistil.spec.FunctionSpec.bind` binds an in-process call; so the
served prompt is token for token the one dispatch and training use (:func:`call_prompt`).

What a signature cannot carry is accepted as any JSON value and passed through: a parameter
typed with a model or a class of the user's (``order: Order``), and a default that is not a
Python literal (``= Order()``, an enum member), which makes the parameter required. Values are
never converted (``3`` stays ``3`` for a ``float`` parameter, as ``fn(x=3)`` renders in
process); only set-typed values are sorted and deduplicated, as :func:`localdistil.spec.jsonable`
does with a set. A manifest without a signature (adapters trained on foreign records) takes any
JSON object, in the order given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from localdistil.serve.signature import Parameter, arguments_model, read_signature
from localdistil.spec import canonical_json

_KEYWORD = re.compile(r"([A-Za-z_]\w*)=")


class ArgumentError(ValueError):
    """A request's arguments do not fit the function; ``param`` names the parameter."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class FunctionParameters:
    """The parameters of a distilled function, from its rendered signature.

    Args:
        name: the function's name in prompts.
        signature: ``manifest.signature``, or ``None`` for a manifest without one.

    Raises:
        ValueError: the signature cannot be read (the message shows it).
    """

    def __init__(self, name: str, signature: str | None):
        self.name = name
        self.signature = signature
        self.parameters: tuple[Parameter, ...] | None = (
            None if signature is None else read_signature(signature))
        self._model = None if self.parameters is None else arguments_model(name, self.parameters)

    @property
    def names(self) -> tuple[str, ...]:
        """The parameter names in signature order (empty when the signature is unknown)."""
        return tuple(p.name for p in self.parameters or ())

    @property
    def single_string(self) -> str | None:
        """The name of the only parameter when there is exactly one and it is a string."""
        params = self.parameters or ()
        if len(params) == 1 and params[0].kind == "plain" and params[0].annotation == "str":
            return params[0].name
        return None

    def describe(self) -> str:
        """``triage(title, severity=2)``: how messages show the parameters."""
        if self.parameters is None:
            return f"{self.name}(...)"
        shown = [p.name + (f"={canonical_json(p.default)}" if p.has_default else "")
                 for p in self.parameters]
        return f"{self.name}({', '.join(shown)})"

    def bind(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Check a call's JSON arguments, apply the defaults, and order them as the signature
        does: what :meth:`~localdistil.spec.FunctionSpec.bind` gives for the same call.

        Raises:
            ArgumentError: an unknown, missing or mistyped argument (``param`` names it).
        """
        if not isinstance(arguments, Mapping):
            raise ArgumentError(f"the arguments of {self.describe()} must be a JSON object, "
                                f"not {type(arguments).__name__}", "arguments")
        if self.parameters is None:
            return {str(key): value for key, value in arguments.items()}
        unknown = [key for key in arguments if key not in self.names]
        if unknown:
            raise ArgumentError(f"{self.name} has no parameter {unknown[0]!r}; it takes "
                                f"{self.describe()}", f"arguments.{unknown[0]}")
        missing = [p.name for p in self.parameters if not p.has_default and p.name not in arguments]
        if missing:
            raise ArgumentError(f"missing argument {missing[0]!r} of {self.describe()}",
                                f"arguments.{missing[0]}")
        try:  # JSON mode: strict about JSON types, and tuples and dates arrive as JSON does
            if self._model is not None:
                self._model.model_validate_json(json.dumps(dict(arguments)))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            raise ArgumentError(f"argument {where!r} of {self.describe()}: {first['msg']} "
                                f"(got {canonical_json(first.get('input'))[:80]})",
                                f"arguments.{where}") from None
        bound = {}
        for p in self.parameters:
            value = arguments[p.name] if p.name in arguments else p.default
            if p.is_set and isinstance(value, list):
                value = sorted({canonical_json(item): item for item in value}.values(),
                               key=canonical_json)
            bound[p.name] = value
        return bound


def call_prompt(engine: Any, function: FunctionParameters, arguments: Mapping[str, Any],
                repairs: Sequence[Mapping[str, str]] = ()) -> list[int]:
    """The prompt token ids of one call: ``engine.call_prompt`` of the bound arguments (and,
    for a tool set, the refused answers fed back), the rendering dispatch and training use.
    The route calls this, and tests compare its result with in-process dispatch's.

    Raises:
        ArgumentError: the arguments do not fit the function.
    """
    return engine.call_prompt(function.bind(arguments), repairs)


def request_repairs(messages: Sequence[Any]) -> list[dict[str, str]]:
    """A client's retry of a tool-set call (functioncalming's, say): the assistant tool calls
    after the last user message, each answered by tool messages holding the error, as
    repairs; ``[]`` when the messages end with the user's."""
    from localdistil.records.foreign import refused_attempts

    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        return []
    turns = [m.model_dump(exclude_none=True) for m in messages[last_user + 1:]]
    for turn in turns:
        turn["content"] = message_text(turn.get("content")) if turn.get("content") else None
    return refused_attempts(turns) or []


def message_text(content: Any) -> str:
    """The text of a message's ``content``: the string, or its ``text`` parts joined.

    Raises:
        ArgumentError: a part that is not text (an image, audio).
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ArgumentError(f"only text content is understood, not a {part.get('type')!r} "
                                "part", "messages")
        texts.append(part["text"])
    return "".join(texts)


def request_arguments(function: FunctionParameters, messages: Sequence[Any],
                      arguments: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The call a request asks for, before binding: the body's ``arguments``; else the last
    user message when it is a JSON object of the function's parameters, or the call as
    dispatch's prompt renders it (:func:`parse_call`); else, for a function of one string
    parameter, that message's text.

    Raises:
        ArgumentError: no arguments found (the message says how to send them).
    """
    if arguments is not None:
        return arguments
    users = [m for m in messages if m.role == "user"]
    how = (f"{function.describe()} takes its arguments as a JSON object in the last user "
           "message, or as `arguments` in the body (extra_body={'arguments': {...}})")
    if not users:
        raise ArgumentError(f"no user message: {how}", "messages")
    text = message_text(users[-1].content)
    parsed = _json_object(text)
    single = function.single_string
    if parsed is not None and (single is None or (parsed and set(parsed) <= {single})):
        return parsed
    rendered = parse_call(function.name, text)
    if rendered is not None:
        return rendered
    if single is not None:
        return {single: text}
    raise ArgumentError(f"the last user message is not a JSON object: {how}", "messages")


def parse_call(name: str, text: str) -> dict[str, Any] | None:
    """The arguments of a call as :func:`localdistil.prompts.render_call` writes it
    (``triage(title="x", severity=2)``, after ``Return`` in the ``full`` style), or ``None`` when
    ``text`` is not one. A client that renders dispatch's prompt itself, as it must for vLLM,
    sends the same messages here."""
    text = text.strip()
    text = text.removeprefix("Return ")
    if not (text.startswith(f"{name}(") and text.endswith(")")):
        return None
    position, arguments = len(name) + 1, {}
    if position == len(text) - 1:
        return arguments
    decoder = json.JSONDecoder()
    while True:
        key = _KEYWORD.match(text, position)
        if key is None:
            return None
        try:
            value, position = decoder.raw_decode(text, key.end())
        except ValueError:
            return None
        arguments[key.group(1)] = value
        if text.startswith(", ", position):
            position += 2
        elif position == len(text) - 1:
            return arguments
        else:
            return None


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
