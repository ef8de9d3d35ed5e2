"""JSON schemas from requests: compared with an adapter's, or turned into a grammar's.

Clients send a schema in several spellings of the same thing. The ``openai`` client's
``parse()`` sends a *strict* variant (every field required, ``additionalProperties: false``,
``$ref`` with siblings inlined, ``None`` defaults dropped); instructor's tool mode sends the
model's schema with its docstring as the description. :func:`normal_form` maps all of them to one
form, so :func:`difference` tells a schema that truly differs from the adapter's (another field,
another type, another enum) from one that is only spelt differently, and says what differs.

What the normal form leaves out cannot change an answer under localdistil's grammar: titles,
descriptions, defaults and examples; ``required`` (the canonical answer writes every field);
``additionalProperties: false`` (the grammar never writes a field the schema does not name); the
order of an object's properties (JSON objects are unordered).
"""

from __future__ import annotations

import copy
from typing import Any

#: Keys that annotate a schema without constraining its values (for our grammar).
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment",
                          "deprecated", "readOnly", "writeOnly", "strict", "$schema", "$id",
                          "required", "discriminator"})


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with every ``$ref`` to its own ``$defs``/``definitions`` replaced by
    the definition (a recursive one is left as a ``$ref``), and the definitions dropped."""
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}

    def walk(node: Any, expanding: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(item, expanding) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: walk(value, expanding) for key, value in node.items()
               if key not in ("$defs", "definitions")}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in defs:
            name = ref.rsplit("/", 1)[-1]
            if name in expanding:
                return out
            target = walk(defs[name], (*expanding, name))
            del out["$ref"]
            return {**target, **out}  # siblings of a $ref win, as the strict variant does
        return out

    return walk(copy.deepcopy(schema), ())


def normal_form(schema: Any) -> Any:
    """The form two schemas are compared in (see the module's docstring)."""
    if isinstance(schema, dict) and ("$defs" in schema or "definitions" in schema):
        schema = inline_refs(schema)
    return _normal(schema)


def _normal(node: Any) -> Any:
    if isinstance(node, list):
        return [_normal(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS or (key == "additionalProperties" and isinstance(value, bool)):
            continue
        if key in ("properties", "patternProperties") and isinstance(value, dict):
            out[key] = {name: _normal(sub) for name, sub in value.items()}
        else:
            out[key] = _normal(value)
    all_of = out.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        del out["allOf"]
        out = {**all_of[0], **out}
    return out


def difference(expected: dict[str, Any], given: dict[str, Any], *,
               expected_name: str = "the adapter's", given_name: str = "the request's"
               ) -> str | None:
    """What differs between two schemas once both are in :func:`normal_form`, in words
    (``at properties.kind.enum: the adapter's is [...], the request's is [...]``); ``None``
    when they are the same."""
    return _first_difference(normal_form(expected), normal_form(given), "", expected_name,
                             given_name)


def _first_difference(a: Any, b: Any, path: str, a_name: str, b_name: str) -> str | None:
    where = path or "the top level"
    if isinstance(a, dict) and isinstance(b, dict):
        if path.endswith("properties"):
            extra = [key for key in b if key not in a]
            if extra:
                return f"{b_name} schema has the field {extra[0]!r} (at {where}), {a_name} does not"
            lacking = [key for key in a if key not in b]
            if lacking:
                return f"{b_name} schema lacks the field {lacking[0]!r} (at {where})"
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in b:
                return f"at {where}: {a_name} schema has {key}={_show(a[key])}, {b_name} has none"
            if key not in a:
                return f"at {where}: {b_name} schema has {key}={_show(b[key])}, {a_name} has none"
            found = _first_difference(a[key], b[key], f"{path}.{key}" if path else key, a_name,
                                      b_name)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}[{index}]", a_name, b_name)
            if found:
                return found
        return None
    if a != b or type(a) is not type(b):
        return f"at {where}: {a_name} schema has {_show(a)}, {b_name} has {_show(b)}"
    return None


def _show(value: Any) -> str:
    import json

    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


def tool_union(tools: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The schema of one call to any of ``tools`` (name -> parameters schema), name first:
    ``{"name": "<tool>", "arguments": {...}}``."""
    branches = []
    for name, parameters in tools.items():
        branches.append({
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": inline_refs(parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def restrict_toolset(schema: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A tool-set schema (:func:`~localdistil.records.record.toolset_schema`) that calls only
    the tools in ``names`` (all of them when ``names`` is empty); names the tool set does not
    know are left out.

    Raises:
        ValueError: none of ``names`` is a tool of the set.
    """
    if not names:
        return schema
    parallel = "tool_calls" in (schema.get("properties") or {})
    call = schema["properties"]["tool_calls"]["items"] if parallel else schema
    branches = call.get("anyOf") or [call]
    known = [b["properties"]["name"]["const"] for b in branches]
    kept = [b for b in branches if b["properties"]["name"]["const"] in names]
    if not kept:
        raise ValueError(f"it calls the tools {', '.join(known)}, none of which the request's "
                         f"tools ({', '.join(names)}) name")
    if len(kept) == len(branches):
        return schema
    restricted = copy.deepcopy(schema)
    narrowed = kept[0] if len(kept) == 1 else {"anyOf": kept}
    if parallel:
        restricted["properties"]["tool_calls"]["items"] = copy.deepcopy(narrowed)
        return restricted
    for key in ("anyOf", "type", "properties", "required", "additionalProperties"):
        restricted.pop(key, None)
    return {**restricted, **copy.deepcopy(narrowed)}
