"""The canonical JSON text of a schema as one regular expression, the input of every engine.

Canonical means the text Pydantic itself writes (``model.model_dump_json()``): keys in schema
order, every field present (defaults included), no whitespace anywhere, strings escaped the way
Pydantic escapes them, floats in Pydantic's shortest form (up to the limit described at
:func:`_number_regex`). Free whitespace is excluded on purpose: small models given the choice
loop on newlines until the token cap.

:func:`canonical_regex` normalises the schema so that every property is required
(:func:`canonical_schema`), has ``outlines_core`` turn it into a regular expression with no
whitespace, and swaps its string, number, integer and date/time pieces for canonical ones
(:data:`STRING_INNER`, :data:`NUMBER`, :data:`INTEGER`, :data:`FORMATS`): Outlines' own forms
accept ``1.50``, ``-0``, ``\\/`` and any Unicode digit in a date, and refuse what Pydantic writes
for some characters (``\\u0001``, raw DEL and U+0080-U+009F). Recursive types are refused (a
regular expression cannot nest without bound; Outlines cuts them at depth 3 and then wrote
``,}``).

Not expressed, so left to Pydantic's validation (a caller may retry or fall back): numeric
bounds (``Field(ge=0, le=1)``), string ``pattern`` together with a length limit, 29 February in
a year that has none, ``duration`` (timedelta) texts, which stay free strings.
"""

from __future__ import annotations

import json
from typing import Any

from localdistil.errors import DispatchError

INTEGER = r"(0|-?[1-9][0-9]*)"
"""An integer as Pydantic writes it: no ``-0``, no leading zeros."""

STRING_INNER = r'([^"\\\x00-\x1F]|\\["\\bfnrt]|\\u00(0[0-7bef]|1[0-9a-f]))'
"""One character of a JSON string as Pydantic escapes it: ``\\"``, ``\\\\``, the five short
escapes for control characters, ``\\u00xx`` (lower-case) for the others, everything else raw
(``/``, DEL and non-ASCII included)."""


SIGNIFICANT_DIGITS = 17
"""The most significant digits a float may be written with: 17 is enough for every float, so
every text Pydantic writes is admitted (``0.30000000000000004``, ``2.3333333333333335``)."""


def _number_regex(digits: int = SIGNIFICANT_DIGITS) -> str:
    """A float as Pydantic writes it: its shortest round-tripping digits, no trailing zeros.

    Pydantic writes decimal notation with at least one fraction digit for 1e-5 <= |x| < 1e16
    (``0.00001``, ``1.5``, ``1000000000000000.0``) and ``1.5e+16`` / ``1.5e-7`` outside it. The
    pattern admits exactly those spellings with at most ``digits`` significant digits. Every text
    of at most 15 significant digits is then canonical (15 digits always survive a round trip);
    a 16- or 17-digit text is canonical when it is the shortest one for its value, which is
    what a model trained on Pydantic's output writes, and parses to a valid float either way.
    """
    digit, nonzero = "[0-9]", "[1-9]"
    decimals = []
    for width in range(1, 17):  # integer part of `width` digits (< 1e16), at most `digits` in all
        head = nonzero + (f"{digit}{{{width - 1}}}" if width > 1 else "")
        room = digits - width
        if room <= 0:
            tail = "0"
        elif room == 1:
            tail = f"(0|{nonzero})"
        else:
            tail = f"(0|{digit}{{0,{room - 1}}}{nonzero})"
        decimals.append(rf"{head}\.{tail}")
    below_one = rf"0\.(0|0{{0,4}}{nonzero}({digit}{{0,{digits - 2}}}{nonzero})?)"
    mantissa = rf"{nonzero}(\.{digit}{{0,{digits - 2}}}{nonzero})?"
    large = rf"{mantissa}e\+(1[6-9]|[2-9][0-9]|[12][0-9]{{2}}|30[0-7])"
    small = rf"{mantissa}e-([6-9]|[1-9][0-9]|[12][0-9]{{2}}|30[0-7])"
    return "-?(" + "|".join([*decimals, below_one, large, small]) + ")"


NUMBER = _number_regex()
"""A JSON number for a ``float`` field, as Pydantic writes it (see :func:`_number_regex`)."""

_YEAR = "([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"  # 0001-9999
_DAY = (rf"{_YEAR}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
        r"|02-(0[1-9]|1[0-9]|2[0-9]))")  # 29 February in any year: the one date left to Pydantic
_MICROSECONDS = (r"(\.([1-9][0-9]{5}|0[1-9][0-9]{4}|00[1-9][0-9]{3}|000[1-9][0-9]{2}"
                 r"|0000[1-9][0-9]|00000[1-9]))?")  # six digits, left out when zero
_CLOCK = rf"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]{_MICROSECONDS}"
_OFFSET = r"(Z|[+-](0[1-9]|1[0-9]|2[0-3]):[0-5][0-9]|[+-]00:(0[1-9]|[1-5][0-9]))?"  # UTC is Z
FORMATS = {"date-time": f'"{_DAY}T{_CLOCK}{_OFFSET}"', "date": f'"{_DAY}"',
           "time": f'"{_CLOCK}{_OFFSET}"'}
"""Dates and times as Pydantic writes them (``2026-03-03T09:30:00.250000+01:00``), in ASCII
digits: Outlines' own patterns admit any Unicode digit, six-digit years and ``\\.123``."""

_OUTLINES_FORMATS = ("date-time", "date", "time", "uuid", "email", "uri")  # others: a plain string

# Keywords whose value is a schema, a list of schemas, or a name -> schema mapping.
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def canonical_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` in which every object property is required.

    Pydantic writes every field, defaults included, so the canonical text never leaves one out;
    requiring them also removes a branch per optional field from the grammar.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA:
        if isinstance(out.get(key), dict):
            out[key] = canonical_schema(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [canonical_schema(item) for item in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: canonical_schema(sub) for name, sub in out[key].items()}
    if isinstance(out.get("properties"), dict):
        out["required"] = list(out["properties"])
    if out.get("format") is not None and out["format"] not in _OUTLINES_FORMATS:
        del out["format"]  # e.g. a timedelta's "duration": Pydantic checks the text
    return out


def canonical_regex(schema: dict[str, Any]) -> str:
    """The regular expression matching exactly the canonical compact JSON texts of ``schema``."""
    from outlines_core import json_schema as oc_schema

    cycle = _recursion(schema)
    if cycle:
        raise DispatchError(f"the return type {schema_title(schema)!r} is recursive "
                            f"({' -> '.join(cycle)}), which a regular grammar cannot express: "
                            "bound the nesting with separate models per level")
    text = json.dumps(canonical_schema(schema))
    try:
        regex = oc_schema.build_regex_from_schema(text, whitespace_pattern="")
    except Exception as error:  # outlines_core raises its own ValueError/TypeError kinds
        raise DispatchError(f"cannot build an output grammar from the JSON schema "
                            f"{schema_title(schema)!r}: {error}. Simplify the return type "
                            "(recursive or unusual types are the usual cause)") from error
    # NUMBER first: Outlines' number pattern contains its integer pattern.
    for outlines_piece, ours in ((oc_schema.NUMBER, NUMBER), (oc_schema.INTEGER, INTEGER),
                                 (oc_schema.DATE_TIME, FORMATS["date-time"]),
                                 (oc_schema.DATE, FORMATS["date"]),
                                 (oc_schema.TIME, FORMATS["time"]),
                                 (oc_schema.STRING_INNER, STRING_INNER)):
        regex = regex.replace(outlines_piece, ours)
    return regex


def _recursion(schema: dict[str, Any]) -> list[str]:
    """A cycle of ``$ref`` names reachable from the top of ``schema``, or ``[]``."""
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"].rsplit("/", 1)[-1]] if isinstance(node.get("$ref"), str) else []
            nested = [value for key, value in node.items() if key not in ("$defs", "definitions")]
            return found + [name for value in nested for name in refs(value)]
        if isinstance(node, list):
            return [name for item in node for name in refs(item)]
        return []

    def visit(name: str, path: list[str]) -> list[str]:
        if name in path:
            return [*path[path.index(name):], name]
        for child in refs(defs.get(name, {})):
            cycle = visit(child, [*path, name])
            if cycle:
                return cycle
        return []

    for name in refs(schema):
        cycle = visit(name, [])
        if cycle:
            return cycle
    return []


def schema_title(schema: dict[str, Any]) -> str:
    """How messages name a schema: its title, else the model its top-level ``$ref`` names."""
    if not isinstance(schema, dict):
        return repr(schema)
    ref = schema.get("$ref")
    named = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else "<untitled>"
    return str(schema.get("title") or named)
