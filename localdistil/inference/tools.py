"""Tool sets on the engine: several tools, answered under one grammar, checked and executed.

A :class:`ToolUnion` holds the tools of a set: Pydantic models (the call's arguments are the
model) and plain functions (their parameters become a model, from the signature and the
docstring's ``Args:`` section; the function runs with the validated arguments). Its
:attr:`~ToolUnion.schema` is the union over the tools, name first
(:func:`~localdistil.records.record.toolset_schema`), so the grammar makes an unknown tool, bad
JSON or a value of the wrong type impossible. What the grammar cannot express (numeric bounds,
custom validators) and a :class:`~localdistil.errors.ToolCallError` raised by a function tool
reject the answer; :func:`answer_with_model` then samples again, each time at another seed and
never keeping an answer identical to one already refused.

:class:`ToolsetResult` is what a tool-set call returns, in functioncalming's terms: the clean
calls and their results, the rewritten history (one assistant message with the clean calls,
then one tool message per call) and the raw one (every rejected attempt and why).

The user-facing :class:`~localdistil.trace.toolset.Toolset` (modes, recording) is built on this.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_type_hints

from pydantic import BaseModel, Field, ValidationError, create_model
from pydantic_core import to_jsonable_python

from localdistil.errors import ToolCallError
from localdistil.prompts import render_completion, render_toolset_messages
from localdistil.records.record import output_calls, toolset_schema

if TYPE_CHECKING:
    from localdistil.inference.engine import Engine

#: The temperature of a resample after an answer was refused.
RESAMPLE_TEMPERATURE = 0.7
#: Seeds tried per resample to find an answer unlike those already refused.
_DISTINCT_TRIES = 4


# -- tools ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tool:
    """One tool: a name, a description, the model of its arguments and, for a function tool,
    the function. Build it with :meth:`of`."""

    name: str
    description: str
    model: type[BaseModel]
    function: Callable[..., Any] | None = None

    @classmethod
    def of(cls, tool: Any) -> Tool:
        """The tool of a Pydantic model class or a plain function.

        Raises:
            TypeError: anything else.
        """
        if isinstance(tool, Tool):
            return tool
        if isinstance(tool, type) and issubclass(tool, BaseModel):
            doc = tool.__doc__ if tool.__doc__ != BaseModel.__doc__ else None
            return cls(tool.__name__, inspect.cleandoc(doc or ""), tool)
        if inspect.isfunction(tool):
            description, params = _split_docstring(inspect.getdoc(tool) or "")
            return cls(tool.__name__, description, _arguments_model(tool, params), tool)
        raise TypeError(f"a tool is a Pydantic model class or a function, not {tool!r}")

    @property
    def definition(self) -> dict[str, Any]:
        """OpenAI's function definition: ``{"name", "description", "parameters"}``."""
        return {"name": self.name, "description": self.description,
                "parameters": self.model.model_json_schema()}


def _arguments_model(fn: Callable[..., Any], descriptions: Mapping[str, str]) -> type[BaseModel]:
    """A model of ``fn``'s parameters (annotations, defaults, docstring descriptions)."""
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__} takes *{name}: a tool's parameters must be named")
        default = ... if param.default is param.empty else param.default
        fields[name] = (hints.get(name, Any), Field(default, description=descriptions.get(name)))
    return create_model(fn.__name__, **fields)


def _split_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description and the ``Args:`` entries (Google style) of a docstring."""
    match = re.search(r"^(Args|Arguments|Parameters):\s*$", doc, re.MULTILINE)
    if match is None:
        return doc.strip(), {}
    params: dict[str, str] = {}
    current = None
    for line in doc[match.end():].splitlines():
        if line.strip() and not line.startswith((" ", "\t")):
            break  # the next section
        entry = re.match(r"\s+(\w+)(?:\s*\(.*?\))?:\s*(.*)", line)
        if entry and (current is None or len(line) - len(line.lstrip()) <= params[current][0]):
            current = entry.group(1)
            params[current] = (len(line) - len(line.lstrip()), entry.group(2).strip())
        elif current is not None and line.strip():
            indent, text = params[current]
            params[current] = (indent, f"{text} {line.strip()}")
    return doc[:match.start()].strip(), {name: text for name, (_, text) in params.items()}


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One clean call: the tool's name and its validated arguments."""

    name: str
    arguments: BaseModel
    id: str = dataclasses.field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "arguments"}`` with the arguments as JSON-compatible data (schema order)."""
        return {"name": self.name, "arguments": self.arguments.model_dump(mode="json")}

    def to_openai(self) -> dict[str, Any]:
        """The call as an OpenAI ``tool_calls`` entry (arguments as canonical JSON text)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments.model_dump_json()}}


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One answer to a tool-set call and what became of it.

    Attributes:
        source: who answered: ``"model"`` or ``"teacher"``.
        calls: the calls as answered (``{"name", "arguments"}``), before validation.
        text: the model's text (``None`` for the teacher).
        error: why the answer was refused; ``None`` when it was accepted.
    """

    source: Literal["model", "teacher"]
    calls: list[dict[str, Any]]
    text: str | None = None
    error: str | None = None


class ToolUnion:
    """The tools of a set, the schema of their union, and the checks of an answer.

    Args:
        name: the tool set's name (its prompts say ``name(user_message=...)``).
        tools: Pydantic model classes and functions (or :class:`Tool` objects).
        parallel: answers hold 1 to ``max_calls`` calls; otherwise exactly one.
        max_calls: the most calls in one answer.

    Raises:
        TypeError: a tool that is neither a model nor a function.
        ValueError: no tools, two of one name, ``max_calls`` < 1.
    """

    def __init__(self, name: str, tools: Sequence[Any], *, parallel: bool = True,
                 max_calls: int = 4):
        built = [Tool.of(tool) for tool in tools]
        self.name = name
        self.tools = {tool.name: tool for tool in built}
        self.parallel = parallel
        self.max_calls = max_calls if parallel else 1
        self.definitions = [tool.definition for tool in built]
        self.schema = toolset_schema(name, self.definitions, parallel=parallel,
                                     max_calls=self.max_calls)

    def messages(self, user_message: str, style: str = "compact") -> list[dict[str, str]]:
        """The prompt of one call, as training renders it."""
        return render_toolset_messages(self.name, self.definitions, user_message, style)

    def output(self, calls: Sequence[ToolCall]) -> dict[str, Any]:
        """What the model writes for ``calls``: ``{"tool_calls": [...]}``, or the one call."""
        dicts = [call.to_dict() for call in calls]
        return {"tool_calls": dicts} if self.parallel else dicts[0]

    def completion(self, calls: Sequence[ToolCall]) -> str:
        """The canonical text of :meth:`output` (compact, schema key order, name first)."""
        return render_completion(self.output(calls))

    def check(self, calls: Sequence[Mapping[str, Any]]) -> list[ToolCall]:
        """Validate answered calls (``{"name", "arguments"}``; arguments a dict or JSON text)
        into :class:`ToolCall` objects, every validator run.

        Raises:
            ToolCallError: no call, too many, an unknown tool, arguments that are not a JSON
                object or that the tool's model refuses.
        """
        if not calls:
            raise ToolCallError(f"{self.name}: the answer holds no tool call")
        if len(calls) > self.max_calls:
            raise ToolCallError(f"{self.name}: {len(calls)} calls, more than max_calls="
                                f"{self.max_calls}")
        checked = []
        for call in calls:
            name = call.get("name")
            tool = self.tools.get(name)  # type: ignore[arg-type]
            if tool is None:
                raise ToolCallError(f"{self.name}: no tool {name!r}; the tools are "
                                    f"{', '.join(self.tools)}", tool=name)
            arguments = call.get("arguments")
            if isinstance(arguments, BaseModel):
                arguments = arguments.model_dump()
            try:
                if isinstance(arguments, (str, bytes)):
                    checked.append(ToolCall(name, tool.model.model_validate_json(arguments)))
                else:
                    checked.append(ToolCall(name, tool.model.model_validate(arguments)))
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first.get("loc", ()))
                raise ToolCallError(f"{name}: {where + ': ' if where else ''}{first['msg']}",
                                    tool=name) from None
        return checked

    def execute(self, calls: Sequence[ToolCall]) -> list[Any]:
        """Run the function tools with their validated arguments, in order; a model tool's
        result is its validated model.

        Raises:
            ToolCallError: raised by a function tool, to refuse its arguments.
            Exception: anything else a function raises, as it is.
        """
        results = []
        for call in calls:
            function = self.tools[call.name].function
            if function is None:
                results.append(call.arguments)
                continue
            arguments = {name: getattr(call.arguments, name)
                         for name in type(call.arguments).model_fields}
            try:
                results.append(function(**arguments))
            except ToolCallError as error:
                if error.tool is None:
                    error.tool = call.name
                raise
        return results

    def accept(self, calls: Sequence[Mapping[str, Any]], *, execute: bool = True
               ) -> tuple[list[ToolCall], list[Any]]:
        """:meth:`check`, then :meth:`execute` (unless ``execute=False``: results are then the
        validated arguments)."""
        checked = self.check(calls)
        return checked, (self.execute(checked) if execute else [c.arguments for c in checked])


# -- answering with the engine -------------------------------------------------------------------


@dataclasses.dataclass
class Answered:
    """What :func:`answer_with_model` found: the accepted calls (``None`` when every attempt
    was refused), their results, and every attempt in order."""

    calls: list[ToolCall] | None
    results: list[Any]
    attempts: list[Attempt]

    @property
    def ok(self) -> bool:
        return self.calls is not None

    @property
    def error(self) -> str | None:
        """Why the last attempt was refused."""
        return None if self.ok or not self.attempts else self.attempts[-1].error


def answer_with_model(engine: Engine, union: ToolUnion, prompt: Sequence[int], *,
                      resamples: int = 0, execute: bool = True, seed: int = 0,
                      max_new_tokens: int | None = None) -> Answered:
    """Answer one prompt with tool calls: greedy first (:meth:`Engine.answer`), then, while
    the answer is refused, up to ``resamples`` samples at :data:`RESAMPLE_TEMPERATURE`, each
    unlike every answer refused before.

    Raises:
        ValueError: no budget (a base model and no ``max_new_tokens``).
        Exception: what a function tool raises, other than ToolCallError.
    """
    budget = max_new_tokens or engine.default_budget
    if budget is None:
        raise ValueError(f"{engine.name} is a base model: pass max_new_tokens")
    outcome = engine.answer([prompt], schema=union.schema, max_new_tokens=budget)[0]
    text, finished = outcome.text, outcome.status != "budget"
    attempts: list[Attempt] = []
    seen: set[str] = set()
    for attempt in range(resamples + 1):
        if attempt:
            text, finished = _distinct_sample(engine, union, prompt, budget, seen,
                                              seed + 1000 * attempt)
        seen.add(text)
        calls: list[dict[str, Any]] = []
        try:
            if not finished:
                raise ToolCallError(f"the answer ran out of tokens ({budget}): {text[:80]}")
            calls = output_calls(json.loads(text))
            accepted, results = union.accept(calls, execute=execute)
        except ToolCallError as error:
            attempts.append(Attempt("model", calls, text, str(error)))
            continue
        attempts.append(Attempt("model", calls, text))
        return Answered(accepted, results, attempts)
    return Answered(None, [], attempts)


def _distinct_sample(engine: Engine, union: ToolUnion, prompt: Sequence[int], budget: int,
                     seen: set[str], seed: int) -> tuple[str, bool]:
    """A sampled answer not in ``seen`` where one of a few seeds gives one (else the last)."""
    for offset in range(_DISTINCT_TRIES):
        result = engine.generate(union.schema, [prompt], max_new_tokens=budget,
                                 temperature=RESAMPLE_TEMPERATURE, seed=seed + offset)[0]
        if result.text not in seen:
            break
    return result.text, result.finished


# -- the result and its histories ----------------------------------------------------------------


@dataclasses.dataclass
class ToolsetResult:
    """The answer to one tool-set call.

    Attributes:
        tool_calls: the clean calls (empty when none succeeded).
        tool_call_results: per call, what the function tool returned, or the validated model.
        messages: the rewritten history: the user's message, one assistant message with the
            clean calls, one tool message per call (its result).
        messages_raw: everything that happened: every refused attempt, each followed by tool
            messages saying why, then what ``messages`` ends with.
        success: whether clean calls were found.
        error: why not (a :class:`~localdistil.errors.ToolCallError`), else ``None``.
        retries_done: answers tried after the first.
        source: who gave the clean calls: ``"model"`` or ``"teacher"``.
        attempts: every answer, in order.
    """

    tool_calls: list[ToolCall]
    tool_call_results: list[Any]
    messages: list[dict[str, Any]]
    messages_raw: list[dict[str, Any]]
    success: bool
    error: Exception | None
    retries_done: int
    source: Literal["model", "teacher"] | None
    attempts: list[Attempt]


def build_result(user_message: str, attempts: list[Attempt], calls: list[ToolCall] | None,
                 results: list[Any], source: Literal["model", "teacher"] | None = None,
                 error: Exception | None = None) -> ToolsetResult:
    """A :class:`ToolsetResult` with both histories, from the attempts of one call."""
    user = {"role": "user", "content": user_message}
    clean = [] if calls is None else clean_turn(calls, results)
    raw: list[dict[str, Any]] = [user]
    for attempt in attempts:
        if attempt.error is not None:
            raw += _refused_turn(attempt)
    raw += clean
    return ToolsetResult(
        tool_calls=list(calls or []), tool_call_results=list(results) if calls else [],
        messages=[user, *clean] if calls is not None else list(raw), messages_raw=raw,
        success=calls is not None, error=error, retries_done=max(len(attempts) - 1, 0),
        source=source if calls is not None else None, attempts=attempts,
    )


def clean_turn(calls: Sequence[ToolCall], results: Sequence[Any]) -> list[dict[str, Any]]:
    """One assistant message with the calls, then one tool message per call."""
    return [
        {"role": "assistant", "content": None, "tool_calls": [c.to_openai() for c in calls]},
        *({"role": "tool", "tool_call_id": call.id, "content": result_text(result)}
          for call, result in zip(calls, results)),
    ]


def _refused_turn(attempt: Attempt) -> list[dict[str, Any]]:
    if not attempt.calls:  # nothing parsable: the text itself
        return [{"role": "assistant", "content": attempt.text},
                {"role": "user", "content": f"Error: {attempt.error}"}]
    entries = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": str(call.get("name")),
                             "arguments": _arguments_text(call.get("arguments"))}}
               for call in attempt.calls]
    return [{"role": "assistant", "content": None, "tool_calls": entries},
            *({"role": "tool", "tool_call_id": entry["id"], "content": f"Error: {attempt.error}"}
              for entry in entries)]


def _arguments_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(to_jsonable_python(arguments), ensure_ascii=False, separators=(",", ":"))


def result_text(result: Any) -> str:
    """A tool's result as a tool message's content: a string as it is, anything else as JSON."""
    if isinstance(result, str):
        return result
    return json.dumps(to_jsonable_python(result), ensure_ascii=False, separators=(",", ":"))
