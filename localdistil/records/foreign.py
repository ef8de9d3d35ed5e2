"""Records written by other tools: instructor's ``Instructions`` files and OpenAI chat
fine-tuning files.

instructor writes ``messages`` lines (system ``Predict the results of this function:`` + the
signature, user ``Return `fn(540, b=677)` ``, assistant ``function_call`` with indented JSON) or
``raw`` lines (``fn_name``, ``fn_repr``, ``args``, ``kwargs``, ``resp``, ``schema``). Records
carry their arguments by name, so that the dataset can re-render every call in one prompt style.

In ``messages`` lines instructor writes keyword arguments with ``json.dumps`` but positional
ones with ``str()``: ``normalize_date(2029-05-24)``, ``greet(Alice, times=2)``. They are read
back with the signature's annotations: a ``str`` parameter takes its text as it is (commas,
quotes and all), any other parameter a Python literal of its type, and a call is accepted only
where exactly one reading fits the signature. ``label(Paris, TX, USA)`` for
``def label(city: str, country: str)`` reads two ways, so such a record keeps instructor's
prompt with ``args=None``, and :func:`args_problem` says why, for ``records stats`` and the
dataset report. ``raw`` lines keep positional values as JSON and only need the signature in
``fn_repr`` to name them.

Any other chat file whose last message is an assistant ``function_call`` or ``tool_calls`` is
read as prompt + answer (``source_format="openai"``, ``args=None``).

A chat whose answer holds several ``tool_calls``, or one call among several declared ``tools``
(what functioncalming and OpenAI logs of parallel tool calling hold), is the call of a tool set
and keeps every call, in order (:func:`_parse_toolset_chat`).
"""

from __future__ import annotations

import ast
import bisect
import dataclasses
import json
import math
import re
from typing import Any

from localdistil.errors import RecordError
from localdistil.prompts import (
    FULL_SYSTEM_HEADER,
    TOOLSET_PARAMETER,
    render_messages,
    toolset_doc,
    toolset_signature,
)
from localdistil.records.record import Record, toolset_schema

#: Why the arguments of a plain OpenAI chat record are unknown.
OPENAI_PROBLEM = "an OpenAI chat file holds the prompt text only, not the call's arguments"

_STR_RENDERING = (
    "instructor writes positional arguments with str(), so only numbers, bools, None, "
    "other Python literals and `str` parameters can be read back"
)
#: Work (pieces tried, characters scanned) spent on one call before giving up on it.
_MAX_STEPS = 2_000_000
_KEYWORD = re.compile(r"([A-Za-z_]\w*)=")


def parse_chat(obj: dict[str, Any]) -> Record:
    messages = obj["messages"]
    if not messages or messages[-1].get("role") != "assistant":
        raise RecordError("the last message is not the assistant's answer")
    answer = messages[-1]
    tool_calls = answer.get("tool_calls") or []
    declared = [entry.get("function") or {} for entry in obj.get("tools") or []]
    if len(tool_calls) > 1 or (tool_calls and len(declared) > 1):
        return _parse_toolset_chat(messages[:-1], tool_calls, declared)
    if answer.get("function_call"):
        call = answer["function_call"]
    elif answer.get("tool_calls"):
        call = answer["tool_calls"][0]["function"]
    else:
        raise RecordError(
            "the assistant message has no function_call or tool_calls to learn from"
        )
    try:
        output = json.loads(call["arguments"])
    except json.JSONDecodeError as exc:
        raise RecordError(f"the assistant's arguments are not valid JSON: {exc.msg}") from None
    if not isinstance(output, dict):
        raise RecordError("the assistant's arguments are not a JSON object")
    prompt = messages[:-1]
    schema = None
    for entry in obj.get("functions") or []:
        if entry.get("name") == call["name"]:
            schema = entry.get("parameters")
    for entry in obj.get("tools") or []:
        if entry.get("function", {}).get("name") == call["name"]:
            schema = entry["function"].get("parameters")

    instructor_call = _instructor_call(prompt)
    if instructor_call is not None:
        system, call_text = instructor_call
        name, args, _ = _recover_call(call_text, _def_line(system))
        return Record(
            function=name or call["name"], name=name or call["name"], args=args, output=output,
            output_schema=schema, signature=_def_line(system), prompt=prompt,
            source_format="instructor",
        )
    return Record(
        function=call["name"], name=call["name"], args=None, output=output, output_schema=schema,
        prompt=prompt, source_format="openai",
    )


def _parse_toolset_chat(prompt: list[dict[str, Any]], tool_calls: list[dict[str, Any]],
                        declared: list[dict[str, Any]]) -> Record:
    """The record of a tool-set call read from an OpenAI chat: every call kept, in order.

    The tool set is named after its tools (``Escalation_Refund_lookup_order``, sorted, as
    files record no name for it) and its schema is built from the declared tools sorted by name
    (functioncalming sends them in set order, which changes between processes), parallel, with
    :data:`~localdistil.records.record.DEFAULT_MAX_CALLS`; so all records of one tool set group
    together, whatever the order of their ``tools``. When the prompt is one user message
    (system messages aside: a tool set's prompt has none), its text is the call's
    ``user_message`` and the record is re-rendered like a traced tool-set call; otherwise it
    keeps its recorded prompt (``args=None``).
    """
    calls = []
    for index, tool_call in enumerate(tool_calls):
        function = tool_call.get("function") or {}
        try:
            arguments = json.loads(function["arguments"] or "{}")
        except json.JSONDecodeError as exc:
            raise RecordError(f"the arguments of tool call {index + 1} ({function.get('name')}) "
                              f"are not valid JSON: {exc.msg}") from None
        if not isinstance(arguments, dict):
            raise RecordError(f"the arguments of tool call {index + 1} are not a JSON object")
        calls.append({"name": function["name"], "arguments": arguments})
    tools = sorted((dict(d) for d in declared if d.get("name")), key=lambda d: d["name"])
    names = [tool["name"] for tool in tools] or sorted({call["name"] for call in calls})
    unknown = [call["name"] for call in calls if tools and call["name"] not in names]
    if unknown:
        raise RecordError(f"the assistant calls {unknown[0]!r}, which is not among the tools "
                          f"({', '.join(names)})")
    name = re.sub(r"\W", "_", "_".join(names))
    users = [m for m in prompt if m.get("role") == "user"]
    others = [m for m in prompt if m.get("role") not in ("user", "system")]
    args = None
    if len(users) == 1 and not others and isinstance(users[0].get("content"), str):
        args = {TOOLSET_PARAMETER: users[0]["content"]}
    return Record(
        function=name, name=name, args=args, output={"tool_calls": calls},
        output_schema=toolset_schema(name, tools) if tools else None,
        signature=toolset_signature(name), doc=toolset_doc(tools or [{"name": n} for n in names]),
        prompt=prompt, tools=tools or [{"name": n} for n in names], source_format="openai",
    )


def parse_instructor_raw(obj: dict[str, Any]) -> Record:
    name = obj["fn_name"]
    fn_repr = obj.get("fn_repr") or ""
    signature = _def_line(fn_repr)
    positional = list(obj.get("args") or [])
    keywords = dict(obj.get("kwargs") or {})
    args = _bind(_parse_signature(signature), positional, keywords)
    if args is None:
        # the prompt instructor would have written for this call (include_code_body=True)
        rendered = [*map(str, positional), *(f"{k}={json.dumps(v)}" for k, v in keywords.items())]
        function = fn_repr or f"def {name}(...)"
        prompt = [
            {"role": "system", "content": f"{FULL_SYSTEM_HEADER}\n\n{function}"},
            {"role": "user", "content": f"Return `{name}({', '.join(rendered)})`"},
        ]
    else:
        prompt = render_messages(
            name=name, args=args, style="full", signature=signature or f"def {name}(...)"
        )
    return Record(
        function=name, name=name, args=args, output=obj["resp"], output_schema=obj.get("schema"),
        signature=signature, prompt=prompt, source_format="instructor-raw",
    )


def args_problem(record: Record) -> str | None:
    """Why ``record.args`` is ``None``: the reason its arguments could not be read back from
    the file; ``None`` when the record has its arguments."""
    if record.args is not None:
        return None
    instructor_call = _instructor_call(record.prompt)
    if record.source_format == "openai" or instructor_call is None:
        return OPENAI_PROBLEM
    system, call_text = instructor_call
    _, _, problem = _recover_call(call_text, _def_line(system))
    return problem or "the arguments do not match the parameters of the signature in the prompt"


def _instructor_call(prompt: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The system message and the call text of a prompt in instructor's wording."""
    system = next((m["content"] for m in prompt if m.get("role") == "system"), "") or ""
    user = next((m["content"] for m in prompt if m.get("role") == "user"), "") or ""
    call_match = re.fullmatch(r"Return `?(.*?)`?", user.strip(), re.DOTALL)
    if not system.startswith(FULL_SYSTEM_HEADER) or call_match is None:
        return None
    return system, call_match.group(1)


def _def_line(text: str) -> str | None:
    match = re.search(r"^\s*(?:async\s+)?def .*$", text, re.MULTILINE)
    return match.group(0).strip().rstrip(":") if match else None


@dataclasses.dataclass(frozen=True)
class _Parameter:
    name: str
    annotation: ast.expr | None
    required: bool

    def __str__(self) -> str:
        if self.annotation is None:
            return self.name
        return f"{self.name}: {ast.unparse(self.annotation)}"


@dataclasses.dataclass(frozen=True)
class _Signature:
    """The parameters of a ``def`` line, as instructor prints ``inspect.signature``."""

    text: str
    positional: list[_Parameter]
    """Positional-only and positional-or-keyword parameters, in order."""
    keyword_only: list[_Parameter]
    var_positional: str | None
    var_keyword: str | None

    def takes_keyword(self, name: str) -> bool:
        names = {p.name for p in self.positional + self.keyword_only}
        return self.var_keyword is not None or name in names


def _parse_signature(line: str | None) -> _Signature | None:
    if line is None:
        return None
    # defaults printed as ``<object object at 0x...>`` are no Python; their value is not needed
    source = re.sub(r"=\s*<[^<>]*>", "=None", line.removeprefix("async "))
    try:
        fn = ast.parse(source + ":\n    pass").body[0]
    except SyntaxError:
        return None
    if not isinstance(fn, ast.FunctionDef):
        return None
    arguments = fn.args
    ordered = arguments.posonlyargs + arguments.args
    first_default = len(ordered) - len(arguments.defaults)
    positional = [
        _Parameter(a.arg, a.annotation, i < first_default) for i, a in enumerate(ordered)
    ]
    keyword_only = [
        _Parameter(a.arg, a.annotation, default is None)
        for a, default in zip(arguments.kwonlyargs, arguments.kw_defaults)
    ]
    return _Signature(
        text=line, positional=positional, keyword_only=keyword_only,
        var_positional=arguments.vararg.arg if arguments.vararg else None,
        var_keyword=arguments.kwarg.arg if arguments.kwarg else None,
    )


def _bind(
    signature: _Signature | None, positional: list[Any], keywords: dict[str, Any]
) -> dict[str, Any] | None:
    """Arguments by name in signature order, or ``None`` when positional ones cannot be named."""
    if not positional:
        return _in_signature_order(signature, {}, keywords)
    if signature is None or signature.var_positional or len(positional) > len(signature.positional):
        return None
    named = {p.name: value for p, value in zip(signature.positional, positional)}
    return _in_signature_order(signature, named, keywords)


def _in_signature_order(
    signature: _Signature | None, named: dict[str, Any], keywords: dict[str, Any]
) -> dict[str, Any]:
    bound = {**named, **keywords}
    if signature is None:
        return bound
    order = [p.name for p in signature.positional + signature.keyword_only]
    return {**{n: bound[n] for n in order if n in bound}, **bound}


def _recover_call(
    text: str, def_line: str | None
) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """Name, arguments and problem of instructor's call text ``fn(540, b=677)``.

    The arguments are ``None`` when they cannot be read back, and the problem says why.
    """
    text = text.strip()
    name, paren, rest = text.partition("(")
    if not paren or not name or re.search(r"\s", name) or not rest.endswith(")"):
        match = re.match(r"\s*([A-Za-z_]\w*)\(", text)
        return (match.group(1) if match else None), None, f"`{_short(text)}` is not a call"
    inner = rest[:-1]
    signature = _parse_signature(def_line)
    # The keyword arguments start at the first ``, name=`` whose rest reads as instructor's
    # ``name=<json>`` list; a string argument may contain ``, x=`` itself, so each candidate is
    # tried from the left, and at last none (the whole text is positional).
    starts = [0] if re.match(r"[A-Za-z_]\w*=", inner) else []
    starts += [m.end() for m in re.finditer(r", (?=[A-Za-z_]\w*=)", inner)]
    first_problem = None
    for start in [*starts, None]:
        if start is None:
            section, keywords = inner, {}
        else:
            keywords = _keywords(inner, start, signature)
            if keywords is None:
                continue
            section = inner[: max(start - 2, 0)]
        try:
            args, problem = _read_positional(section, signature, keywords)
        except _Unrecoverable as exc:
            return name, None, exc.reason
        if args is not None:
            return name, args, None
        first_problem = first_problem or problem
    return name, None, first_problem


def _keywords(text: str, start: int, signature: _Signature | None) -> dict[str, Any] | None:
    """``a=1, b="x"`` from ``start`` to the end, as instructor writes it (``json.dumps``)."""
    decoder = json.JSONDecoder()
    keywords: dict[str, Any] = {}
    position = start
    while True:
        match = _KEYWORD.match(text, position)
        if match is None:
            return None
        key = match.group(1)
        if key in keywords or (signature is not None and not signature.takes_keyword(key)):
            return None
        try:
            keywords[key], position = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            return None
        if position == len(text):
            return keywords
        if not text.startswith(", ", position):
            return None
        position += 2


def _read_positional(
    section: str, signature: _Signature | None, keywords: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """Arguments from the positional text and the keywords, or ``(None, problem)`` where no
    reading fits (the caller tries the next keyword split).

    Raises:
        _Unrecoverable: no keyword split can help (no signature, ``*args``, two readings).
    """
    if not section:
        return _in_signature_order(signature, {}, keywords), None
    if signature is None:
        raise _Unrecoverable(
            "the prompt shows no `def` signature that parses, so positional arguments "
            "cannot be named"
        )
    if signature.var_positional:
        raise _Unrecoverable(
            f"`{signature.text}` takes *{signature.var_positional}: positional arguments "
            "cannot be named"
        )
    params = signature.positional
    # a parameter bound by keyword, and every one after it, was not given positionally; every
    # required parameter not bound by keyword was
    hi = next((i for i, p in enumerate(params) if p.name in keywords), len(params))
    lo = max([1] + [i + 1 for i, p in enumerate(params) if p.required and p.name not in keywords])
    readings = _readings(section, params, lo, hi)
    if len(readings) > 1:
        shown = " or as ".join(
            ", ".join(f"{p.name}={v!r}" for p, v in zip(params, values)) for values in readings
        )
        raise _Unrecoverable(
            "positional string argument before another positional argument cannot be "
            f"recovered from instructor's str() rendering: `{_short(section)}` reads as {shown}"
        )
    if readings:
        named = {p.name: value for p, value in zip(params, readings[0])}
        return _in_signature_order(signature, named, keywords), None
    if lo <= 1 <= hi and ", " not in section:
        return None, (
            f"`{_short(section)}` for parameter `{params[0]}` is not a Python literal: "
            f"{_STR_RENDERING}"
        )
    return None, (
        f"positional arguments `{_short(section)}` do not fit `{signature.text}`: {_STR_RENDERING}"
    )


class _Unrecoverable(Exception):
    """The arguments of a call cannot be read back, whichever way it is split."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_NO_VALUE = object()


def _readings(section: str, params: list[_Parameter], lo: int, hi: int) -> list[list[Any]]:
    """Up to two ways to cut ``section`` at ``", "`` into between ``lo`` and ``hi`` values, each
    read as its parameter's annotation asks (:func:`_read_value`).

    A ``str`` value may hold ``", "``, so it may end at any separator; any other value is a
    literal, which holds ``", "`` only inside brackets or quotes, so it ends at the first
    separator outside them. That keeps the search to a few readings per separator.
    """
    separators = [m.start() for m in re.finditer(", ", section)]
    memo: dict[tuple[int, int], list[list[Any]]] = {}
    steps = 0

    def literal_end(start: int) -> int:
        nonlocal steps
        if not section.startswith(("[", "{", "(", "'", '"'), start):
            following = bisect.bisect_left(separators, start)
            return separators[following] if following < len(separators) else len(section)
        depth, quote, position = 0, "", start
        while position < len(section):
            char = section[position]
            if quote:
                position += char == "\\"
                quote = "" if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char in "[{(":
                depth += 1
            elif char in "]})":
                depth -= 1
            elif depth == 0 and section.startswith(", ", position):
                break
            position += 1
        steps += position - start
        return position

    def solve(index: int, start: int) -> list[list[Any]]:
        nonlocal steps
        if (index, start) in memo:
            return memo[index, start]
        annotation = params[index].annotation
        if _kind(annotation) in ("str", "str | None"):
            ends = [*separators[bisect.bisect_left(separators, start):], len(section)]
        else:
            ends = [literal_end(start)]
        found: list[list[Any]] = []
        for end in ends:
            steps += 1
            if steps > _MAX_STEPS:
                raise _Unrecoverable(
                    f"`{_short(section)}` splits into arguments in too many ways to read back"
                )
            last = end == len(section)
            if (index + 1 >= lo) if last else (index + 1 < hi):
                value = _read_value(section[start:end], annotation)
                if value is not _NO_VALUE:
                    found += [[value]] if last else [[value, *r] for r in solve(index + 1, end + 2)]
            if len(found) > 1:
                break
        memo[index, start] = found[:2]
        return memo[index, start]

    return solve(0, 0) if lo <= hi else []


def _read_value(text: str, annotation: ast.expr | None) -> Any:
    """One positional value as ``str()`` wrote it, or ``_NO_VALUE`` where it cannot be one."""
    kind = _kind(annotation)
    if kind == "str":
        return text
    if kind == "str | None":
        return None if text == "None" else text
    if text != text.strip():
        return _NO_VALUE
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NO_VALUE
    if isinstance(value, tuple) and not text.startswith("("):
        return _NO_VALUE  # ``1, 2`` is two arguments; str() writes a tuple in parentheses
    value = _json_value(value)
    if kind == "int" and type(value) is not int:
        return _NO_VALUE
    if kind == "float" and type(value) not in (int, float):
        return _NO_VALUE
    if kind == "bool" and type(value) is not bool:
        return _NO_VALUE
    return value


def _kind(annotation: ast.expr | None) -> str | None:
    """``str``, ``str | None``, ``int``, ``float``, ``bool``, or ``None`` for anything else."""
    if isinstance(annotation, ast.Name) and annotation.id in ("str", "int", "float", "bool"):
        return annotation.id
    members = _union_members(annotation)
    if members is not None and sorted(members) == ["None", "str"]:
        return "str | None"
    return None


def _union_members(node: ast.expr | None) -> list[str] | None:
    """``["str", "None"]`` for ``str | None``, ``Optional[str]`` or ``Union[str, None]``."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _union_members(node.left), _union_members(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Constant) and node.value is None:
        return ["None"]
    if isinstance(node, ast.Subscript):
        base = getattr(node.value, "attr", None) or getattr(node.value, "id", None)
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        members = [_union_members(item) for item in items]
        if base in ("Optional", "Union") and all(m is not None for m in members):
            flat = [name for m in members for name in m or []]
            return flat + ["None"] if base == "Optional" else flat
    return None


def _json_value(value: Any) -> Any:
    """A Python literal as JSON would hold it (tuples as lists), or ``_NO_VALUE``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value if not isinstance(value, float) or math.isfinite(value) else _NO_VALUE
    if isinstance(value, (list, tuple)):
        items = [_json_value(item) for item in value]
        return _NO_VALUE if any(item is _NO_VALUE for item in items) else items
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        items = {key: _json_value(item) for key, item in value.items()}
        return _NO_VALUE if any(item is _NO_VALUE for item in items.values()) else items
    return _NO_VALUE


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
