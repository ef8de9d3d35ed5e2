"""A traced call as read back from a file, whatever format wrote it, and the output schema of
a tool set (:func:`toolset_schema`), which records of tool-set calls carry.

A tool-set record is an ordinary record of the tool set as a function of one string parameter
(``args = {"user_message": ...}``, see :func:`localdistil.prompts.render_toolset_messages`) whose
``output`` is what the model writes: ``{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}``
(every call, in order), or one ``{"name": ..., "arguments": {...}}`` for a tool set without
parallel calls; ``output_schema`` is the union schema and ``tools`` the tool definitions. The
output is an object, not a bare list, so that evaluation, shadow agreement and the server treat
it as any other function's output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from localdistil.spec import canonical_json


class Record(BaseModel):
    """One traced call, read back from a file of any supported format.

    ``args`` is ``None`` when the source kept only the prompt text (plain OpenAI chat files,
    instructor calls whose arguments cannot be parsed back); such records train on their
    recorded ``prompt`` as is.
    """

    model_config = ConfigDict(frozen=True)

    function: str
    """``module:qualname`` where known, else the function's name."""
    name: str
    """The name used in prompts."""
    args: dict[str, Any] | None
    output: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    signature: str | None = None
    doc: str | None = None
    prompt: list[dict[str, Any]]
    """The prompt messages as recorded (the assistant answer left out)."""
    fingerprint: str | None = None
    schema_hash: str | None = None
    id: str | None = None
    ts: str | None = None
    duration_s: float | None = None
    extra: dict[str, Any] = {}
    tools: list[dict[str, Any]] | None = None
    """A tool-set record's tools (``{"name", "description", "parameters"}``); ``None`` for a
    function's record."""
    repairs: list[dict[str, str]] = []
    """A tool-set record of a repair: the answers refused before this one's ``output``, each
    ``{"output": text, "error": why}``, which its prompt shows (see
    :func:`localdistil.prompts.repair_turns`)."""
    source_format: Literal["localdistil", "instructor", "instructor-raw", "openai"]
    path: str | None = None
    line: int | None = None

    def input_key(self) -> str:
        """Canonical text of the input, equal for identical calls: used to deduplicate."""
        if self.args is not None:
            if self.repairs:
                return canonical_json([self.name, self.args, self.repairs])
            return canonical_json([self.name, self.args])
        return canonical_json(self.prompt)

    @property
    def is_toolset(self) -> bool:
        """Whether this is the record of a tool-set call (its output is tool calls)."""
        return self.tools is not None


@dataclasses.dataclass(frozen=True)
class RecordProblem:
    """A line that could not be read, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclasses.dataclass
class RecordSet:
    """What :func:`read_records` found: the valid records and the lines it skipped."""

    records: list[Record]
    problems: list[RecordProblem]
    files: list[Path]


# -- the output schema of a tool set -----------------------------------------------------------

#: The key of a tool-set schema that says it is one: ``{"parallel", "max_calls", "tools"}``.
TOOLSET_KEY = "x-localdistil-toolset"
#: ``max_calls`` of tool sets read from foreign files, which do not say.
DEFAULT_MAX_CALLS = 8


def toolset_schema(name: str, tools: Sequence[Mapping[str, Any]], *, parallel: bool = True,
                   max_calls: int = DEFAULT_MAX_CALLS) -> dict[str, Any]:
    """The JSON schema of a tool set's answer: a union over the tools, the name first.

    ``tools`` are ``{"name", "parameters"}`` mappings (OpenAI's function definitions). With
    ``parallel``, the answer is ``{"tool_calls": [call, ...]}`` with 1 to ``max_calls`` calls;
    without, one ``call``; a call is ``{"name": <const>, "arguments": <the tool's schema>}``.
    The tools' ``$defs`` are merged into one; a definition that two tools name alike but define
    differently is renamed ``<Tool>_<Name>`` in the second (its ``$ref``s follow).

    Raises:
        ValueError: no tools, two tools of one name, or ``max_calls`` < 1.
    """
    names = [str(tool["name"]) for tool in tools]
    if not names:
        raise ValueError(f"tool set {name!r} has no tools")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"tool set {name!r} has two tools named {twice[0]!r}")
    if max_calls < 1:
        raise ValueError(f"max_calls of tool set {name!r} must be at least 1, not {max_calls}")
    defs: dict[str, Any] = {}
    branches = []
    for tool_name, tool in zip(names, tools):
        parameters = _merge_defs(tool_name, dict(tool.get("parameters") or {"type": "object"}),
                                 defs)
        branches.append({
            "type": "object",
            "properties": {"name": {"const": tool_name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    call: dict[str, Any] = branches[0] if len(branches) == 1 else {"anyOf": branches}
    if parallel:
        call = {
            "type": "object",
            "properties": {"tool_calls": {"type": "array", "items": call, "minItems": 1,
                                          "maxItems": max_calls}},
            "required": ["tool_calls"],
            "additionalProperties": False,
        }
    schema = {"title": name,
              TOOLSET_KEY: {"parallel": parallel, "max_calls": max_calls, "tools": names},
              **call}
    if defs:
        schema["$defs"] = defs
    return schema


def toolset_info(schema: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{"parallel", "max_calls", "tools"}`` of a tool-set schema; ``None`` for any other."""
    info = schema.get(TOOLSET_KEY) if isinstance(schema, Mapping) else None
    return dict(info) if isinstance(info, Mapping) else None


def output_calls(output: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The calls of a tool-set output, parallel or single: ``[{"name", "arguments"}, ...]``."""
    if "tool_calls" in output:
        return [dict(call) for call in output["tool_calls"]]
    return [dict(output)]


def _merge_defs(tool: str, parameters: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` without its ``$defs``, which go into ``defs`` (renamed on a clash)."""
    local = {**(parameters.pop("definitions", None) or {}), **(parameters.pop("$defs", None) or {})}
    renamed = {}
    for def_name, body in local.items():
        new = def_name
        while new in defs and defs[new] != body:
            new = f"{tool}_{new}"
        renamed[def_name] = new
    for def_name, body in local.items():
        defs[renamed[def_name]] = _rewrite_refs(body, renamed)
    return _rewrite_refs(parameters, renamed)


def _rewrite_refs(node: Any, renamed: Mapping[str, str]) -> Any:
    if isinstance(node, list):
        return [_rewrite_refs(item, renamed) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _rewrite_refs(value, renamed) for key, value in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
        out["$ref"] = f"#/$defs/{renamed.get(ref.rsplit('/', 1)[-1], ref.rsplit('/', 1)[-1])}"
    return out
