"""Records written by other tools: instructor's ``Instructions`` files and OpenAI chat
fine-tuning files.

instructor writes ``messages`` lines (system ``Predict the results of this function:`` + the
signature, user ``Return `fn(540, b=677)` ``, assistant ``function_call`` with indented JSON) or
``raw`` lines (``fn_name``, ``fn_repr``, ``args``, ``kwargs``, ``resp``, ``schema``). Records
carry their arguments by name, so that the dataset can re-render every call in one prompt style.

In ``messages`` lines instructor writes keyword arguments with ``json.dumps`` but positional
ones with ``str()``: ``normalize_date(2029-05-24)``, ``greet(Alice, times=2)``. They are read
back with the signature's annotations (:mod:`localdistil.records.instructor_call`): a ``str``
parameter takes its text as it is, any other parameter a Python literal of its type, and a call
is accepted only where exactly one reading fits the signature. ``label(Paris, TX, USA)`` for
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

import json
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
from localdistil.records.instructor_call import bind_call, def_line, parse_signature, recover_call
from localdistil.records.record import Record, toolset_schema

#: Why the arguments of a plain OpenAI chat record are unknown.
OPENAI_PROBLEM = "an OpenAI chat file holds the prompt text only, not the call's arguments"



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
        name, args, _ = recover_call(call_text, def_line(system))
        return Record(
            function=name or call["name"], name=name or call["name"], args=args, output=output,
            output_schema=schema, signature=def_line(system), prompt=prompt,
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
    ``user_message`` and the record is re-rendered like a traced tool-set call. When it is a
    user message followed by refused attempts (an assistant's tool calls, then the tool
    messages that answered them, as functioncalming's retries and OpenAI logs hold), the
    attempts become the record's :attr:`~Record.repairs`: each attempt's calls as the model
    writes them, and the tool messages' text as the error. Otherwise it keeps its recorded
    prompt (``args=None``).
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
    turns = [m for m in prompt if m.get("role") != "system"]
    args, repairs = None, []
    if turns and turns[0].get("role") == "user" and isinstance(turns[0].get("content"), str):
        found = refused_attempts(turns[1:])
        if found is not None:
            args, repairs = {TOOLSET_PARAMETER: turns[0]["content"]}, found
    return Record(
        function=name, name=name, args=args, output={"tool_calls": calls},
        output_schema=toolset_schema(name, tools) if tools else None,
        signature=toolset_signature(name), doc=toolset_doc(tools or [{"name": n} for n in names]),
        prompt=prompt, tools=tools or [{"name": n} for n in names], repairs=repairs,
        source_format="openai",
    )


def refused_attempts(turns: list[dict[str, Any]]) -> list[dict[str, str]] | None:
    """The refused attempts of a chat after its user message, as
    :attr:`~localdistil.records.record.Record.repairs`; ``None`` when the turns are anything
    else than assistant tool calls each answered by tool messages. The reader and the server
    (a client's retry, e.g. functioncalming's) read them through here."""
    repairs: list[dict[str, str]] = []
    index = 0
    while index < len(turns):
        answer = turns[index]
        calls = answer.get("tool_calls") if answer.get("role") == "assistant" else None
        if not calls:
            return None
        index += 1
        errors = []
        while index < len(turns) and turns[index].get("role") == "tool":
            errors.append(str(turns[index].get("content") or ""))
            index += 1
        if not errors:
            return None
        written = [{"name": (c.get("function") or {}).get("name"), "arguments": _arguments(c)}
                   for c in calls]
        repairs.append({"output": json.dumps({"tool_calls": written}, separators=(",", ":"),
                                             ensure_ascii=False),
                        "error": "\n".join(errors)})
    return repairs


def _arguments(call: dict[str, Any]) -> Any:
    """A refused call's arguments: the JSON they hold, or their text where it is not JSON."""
    text = (call.get("function") or {}).get("arguments") or "{}"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_instructor_raw(obj: dict[str, Any]) -> Record:
    name = obj["fn_name"]
    fn_repr = obj.get("fn_repr") or ""
    signature = def_line(fn_repr)
    positional = list(obj.get("args") or [])
    keywords = dict(obj.get("kwargs") or {})
    args = bind_call(parse_signature(signature), positional, keywords)
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
    _, _, problem = recover_call(call_text, def_line(system))
    return problem or "the arguments do not match the parameters of the signature in the prompt"


def _instructor_call(prompt: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The system message and the call text of a prompt in instructor's wording."""
    system = next((m["content"] for m in prompt if m.get("role") == "system"), "") or ""
    user = next((m["content"] for m in prompt if m.get("role") == "user"), "") or ""
    call_match = re.fullmatch(r"Return `?(.*?)`?", user.strip(), re.DOTALL)
    if not system.startswith(FULL_SYSTEM_HEADER) or call_match is None:
        return None
    return system, call_match.group(1)
