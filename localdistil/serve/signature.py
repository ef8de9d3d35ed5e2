"""A rendered signature (``manifest.signature``) read back into parameters, with :mod:`ast`.

:func:`localdistil.spec.FunctionSpec.from_function` renders a function's signature without
module paths, defaults by their ``repr``: ``def triage(title: str, severity: int = 2) -> Ticket``.
:func:`read_signature` recovers the parameters in order, their defaults (Python literals, as
JSON-compatible data) and their annotations; :func:`arguments_model` turns the annotations into a
Pydantic model that checks a call's JSON arguments. Simple annotations map to JSON types (``str``,
``int``, ``list[str]``, ``dict[str, int]``, ``Literal[...]``, unions, ``Optional``; dates, UUIDs
and paths as strings); anything else (a model of the user's) admits any JSON value.

Not everything ``repr`` writes is Python: a class defined in a function (``make.<locals>.Order``),
an enum member (``<Color.RED: 'red'>``). Those are repaired before parsing; a default that is no
literal makes its parameter required.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import operator
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, create_model

from localdistil.spec import jsonable

#: Annotations whose values travel as JSON strings (Pydantic writes them so).
_STRING_TYPES = frozenset({"str", "bytes", "date", "datetime", "time", "timedelta", "UUID",
                           "Decimal", "Path", "PurePath", "PosixPath", "EmailStr", "AnyUrl",
                           "HttpUrl", "Pattern"})
_SCALARS: dict[str, Any] = {"int": int, "float": float, "bool": bool, "None": type(None),
                            "NoneType": type(None), "Any": Any, "object": Any}
_SEQUENCES = frozenset({"list", "List", "Sequence", "MutableSequence", "Iterable", "Collection",
                        "set", "Set", "frozenset", "FrozenSet", "AbstractSet", "MutableSet",
                        "deque"})
_SETS = frozenset({"set", "Set", "frozenset", "FrozenSet", "AbstractSet", "MutableSet"})
_MAPPINGS = frozenset({"dict", "Dict", "Mapping", "MutableMapping", "OrderedDict",
                       "defaultdict"})
_OPAQUE_DEFAULT = re.compile(r"=\s*<[^<>]*>")  # an enum member's or object's repr
_RETURN = re.compile(r"\)\s*->[^)]*$")
#: What makes a rendered signature other than Python, undone one after another until it parses:
#: nothing; a class defined in a function (``make.<locals>.Order``); an enum member's or an
#: object's repr as a default (the parameter becomes required); an unreadable return annotation.
_REPAIRS = (
    lambda text: text,
    lambda text: text.replace(".<locals>.", "."),
    lambda text: _OPAQUE_DEFAULT.sub("= ...", text),
    lambda text: _RETURN.sub(")", text),
)


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One parameter of the distilled function.

    Attributes:
        name: its name.
        kind: ``"plain"``, ``"var_positional"`` (``*args``: a JSON array) or ``"var_keyword"``
            (``**kwargs``: a JSON object).
        annotation: its annotation as the signature shows it, or ``None``.
        default: its default as JSON-compatible data, or ``None`` when it has none
            (see ``has_default``).
        has_default: whether a call may leave it out.
        is_set: whether its values are a set (sorted and deduplicated when rendered).
    """

    name: str
    kind: Literal["plain", "var_positional", "var_keyword"]
    annotation: str | None
    default: Any = None
    has_default: bool = False
    is_set: bool = False


def read_signature(signature: str) -> tuple[Parameter, ...]:
    """The parameters of ``def name(...) -> T`` as :func:`FunctionSpec.from_function
    <localdistil.spec.FunctionSpec.from_function>` renders it.

    Raises:
        ValueError: not a function signature, even after the repairs.
    """
    text, tree = signature.strip(), None
    for repair in _REPAIRS:
        text = repair(text)
        try:
            tree = ast.parse(text + ": ...")
            break
        except SyntaxError as error:
            problem = error.msg
    if tree is None:
        raise ValueError(f"cannot read the signature {signature!r}: {problem}")
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ValueError(f"cannot read the signature {signature!r}: not a function definition")
    args = node.args
    plain = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(plain) - len(args.defaults))
    defaults += args.defaults
    found = [_parameter(arg, default) for arg, default in zip(plain, defaults)]
    if args.vararg is not None:
        found.append(Parameter(args.vararg.arg, "var_positional", _text(args.vararg.annotation),
                               default=[], has_default=True))
    found += [_parameter(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg is not None:
        found.append(Parameter(args.kwarg.arg, "var_keyword", _text(args.kwarg.annotation),
                               default={}, has_default=True))
    return tuple(found)


def _parameter(arg: ast.arg, default: ast.expr | None) -> Parameter:
    annotation = _text(arg.annotation)
    is_set = _is_set(arg.annotation)
    if default is None:
        return Parameter(arg.arg, "plain", annotation, is_set=is_set)
    try:
        value = ast.literal_eval(default)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return Parameter(arg.arg, "plain", annotation, is_set=is_set)  # not a literal: required
    if value is Ellipsis:
        return Parameter(arg.arg, "plain", annotation, is_set=is_set)
    return Parameter(arg.arg, "plain", annotation, default=jsonable(value), has_default=True,
                     is_set=is_set)


def _text(node: ast.expr | None) -> str | None:
    return None if node is None else ast.unparse(node)


def _is_set(node: ast.expr | None) -> bool:
    """Whether an annotation is a set type, alone or in a union (``set[str] | None``)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_set(node.left) or _is_set(node.right)
    base = _base_name(node)
    if isinstance(node, ast.Subscript) and base in ("Optional", "Union", "Annotated"):
        items = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        return any(_is_set(item) for item in (items[:1] if base == "Annotated" else items))
    return base in _SETS


def _base_name(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def arguments_model(name: str, parameters: Sequence[Parameter]) -> type[BaseModel]:
    """A Pydantic model of the arguments, strict about JSON types, that forbids extras."""
    fields: dict[str, Any] = {}
    for p in parameters:
        annotation = _json_type(ast.parse(p.annotation, mode="eval").body) if p.annotation else Any
        if p.kind == "var_positional":
            annotation = list[annotation]  # type: ignore[valid-type]
        elif p.kind == "var_keyword":
            annotation = dict[str, annotation]  # type: ignore[valid-type]
        fields[p.name] = (annotation, None if p.has_default else ...)
    config = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=False)
    return create_model(f"{name}_arguments", __config__=config, **fields)


def _json_type(node: ast.expr) -> Any:
    """The Python type whose JSON values a simple annotation admits; ``Any`` where unknown."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return type(None)
        if isinstance(node.value, str):  # a string annotation
            try:
                return _json_type(ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                return Any
        return Any
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_json_type(node.left), _json_type(node.right)])
    base = _base_name(node)
    if not isinstance(node, ast.Subscript):
        if base in _STRING_TYPES:
            return str
        if base in _SEQUENCES or base in ("tuple", "Tuple"):
            return list[Any]
        if base in _MAPPINGS:
            return dict[str, Any]
        return _SCALARS.get(base or "", Any)
    items = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
    if base == "Literal":
        try:
            values = tuple(ast.literal_eval(item) for item in items)
        except ValueError:
            return Any
        return Literal[values]  # type: ignore[valid-type]
    if base == "Annotated":
        return _json_type(items[0])
    if base == "Optional":
        return _union([_json_type(items[0]), type(None)])
    if base == "Union":
        return _union([_json_type(item) for item in items])
    if base in _SEQUENCES:
        return list[_json_type(items[0])]  # type: ignore[misc]
    if base in ("tuple", "Tuple"):
        if len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value is Ellipsis:
            return list[_json_type(items[0])]  # type: ignore[misc]
        return tuple[tuple(_json_type(item) for item in items)]  # type: ignore[misc]
    if base in _MAPPINGS and len(items) == 2:
        return dict[str, _json_type(items[1])]  # type: ignore[misc]
    return Any


def _union(types: list[Any]) -> Any:
    """``a | b | ...`` of types built at run time."""
    return functools.reduce(operator.or_, types)
