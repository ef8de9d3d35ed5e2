"""Reading a call back from the text instructor rendered for it (``Return `fn(540, b=677)` ``).

instructor writes keyword arguments with ``json.dumps`` but positional ones with ``str()``:
``normalize_date(2029-05-24)``, ``greet(Alice, times=2)``. They are read back with the
signature's annotations (:func:`parse_signature` reads the ``def`` line instructor shows): a
``str`` parameter takes its text as it is (commas, quotes and all), any other parameter a Python
literal of its type, and a call is accepted only where exactly one reading fits the signature
(:func:`recover_call`); the search is bounded in work, so pathological text gives up with a
reason instead of hanging.
"""

from __future__ import annotations

import ast
import bisect
import dataclasses
import json
import math
import re
from typing import Any

_STR_RENDERING = (
    "instructor writes positional arguments with str(), so only numbers, bools, None, "
    "other Python literals and `str` parameters can be read back"
)
#: Work (pieces tried, characters scanned) spent on one call before giving up on it.
_MAX_STEPS = 2_000_000
_KEYWORD = re.compile(r"([A-Za-z_]\w*)=")


def def_line(text: str) -> str | None:
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


def parse_signature(line: str | None) -> _Signature | None:
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


def bind_call(
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


def recover_call(
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
    signature = parse_signature(def_line)
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
