"""Records written by other tools: instructor's ``Instructions`` files and OpenAI chat
fine-tuning files.

instructor writes ``messages`` (system ``Predict the results of this function:`` + signature,
user ``Return `fn(540, b=677)` ``, assistant ``function_call`` with indented JSON) or ``raw``
lines (``fn_name``, ``args``, ``kwargs``, ``resp``, ``schema``). Positional arguments are mapped
to names through the signature shown in the prompt; instructor renders positional values with
``str()``, so a string argument comes back only where it parses, and otherwise the record keeps
just its prompt (``args=None``). Any other chat file whose last message is an assistant
``function_call`` or ``tool_calls`` is read as prompt + answer (``source_format="openai"``).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from localdistil.errors import RecordError
from localdistil.prompts import FULL_SYSTEM_HEADER, render_messages
from localdistil.records.record import Record


def parse_chat(obj: dict[str, Any]) -> Record:
    messages = obj["messages"]
    if not messages or messages[-1].get("role") != "assistant":
        raise RecordError("the last message is not the assistant's answer")
    answer = messages[-1]
    if answer.get("function_call"):
        call = answer["function_call"]
    elif answer.get("tool_calls"):
        call = answer["tool_calls"][0]["function"]
    else:
        raise RecordError("the assistant message has no function_call or tool_calls to learn from")
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

    system = next((m["content"] for m in prompt if m.get("role") == "system"), "") or ""
    user = next((m["content"] for m in prompt if m.get("role") == "user"), "") or ""
    call_match = re.fullmatch(r"Return `?(.*?)`?", user.strip(), re.DOTALL)
    if system.startswith(FULL_SYSTEM_HEADER) and call_match:
        name, args = _parse_call(call_match.group(1), _parameter_names(system))
        return Record(function=name or call["name"], name=name or call["name"], args=args, output=output,
                      output_schema=schema, signature=_def_line(system), prompt=prompt, source_format="instructor")
    return Record(function=call["name"], name=call["name"], args=None, output=output, output_schema=schema,
                  prompt=prompt, source_format="openai")


def parse_instructor_raw(obj: dict[str, Any]) -> Record:
    name = obj["fn_name"]
    names = _parameter_names(obj.get("fn_repr") or "")
    positional = list(obj.get("args") or [])
    args: dict[str, Any] | None = dict(obj.get("kwargs") or {})
    if positional:
        if names is None or len(names) < len(positional):
            args = None
        else:
            args = {**dict(zip(names, positional)), **args}
    signature = _def_line(obj.get("fn_repr") or "")
    prompt = render_messages(name=name, args=args or {}, style="full", signature=signature or f"def {name}(...)")
    return Record(function=name, name=name, args=args, output=obj["resp"], output_schema=obj.get("schema"),
                  signature=signature, prompt=prompt, source_format="instructor-raw")


def _def_line(text: str) -> str | None:
    match = re.search(r"^\s*(?:async\s+)?def .*$", text, re.MULTILINE)
    return match.group(0).strip().rstrip(":") if match else None


def _parameter_names(text: str) -> list[str] | None:
    """Parameter names from the first ``def`` line in ``text``, receiver excluded."""
    line = _def_line(text)
    if line is None:
        return None
    try:
        tree = ast.parse(line.removeprefix("async ") + ":\n    pass")
    except SyntaxError:
        return None
    fn = tree.body[0]
    if not isinstance(fn, ast.FunctionDef):
        return None
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return [n for n in names if n not in ("self", "cls")]


_JSON_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    return ast.literal_eval(node)


def _parse_call(text: str, names: list[str] | None) -> tuple[str | None, dict[str, Any] | None]:
    """Name and arguments of instructor's call text ``fn(540, b=677)``; arguments are ``None``
    when they cannot be recovered (instructor renders positional strings without quotes)."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        match = re.match(r"\s*([A-Za-z_]\w*)\(", text)
        return (match.group(1) if match else None), None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return None, None
    try:
        positional = [_literal(a) for a in node.args]
        keywords = {k.arg: _literal(k.value) for k in node.keywords if k.arg is not None}
    except (ValueError, TypeError, SyntaxError):
        return node.func.id, None
    if positional and (names is None or len(names) < len(positional)):
        return node.func.id, None
    return node.func.id, {**dict(zip(names or [], positional)), **keywords}
