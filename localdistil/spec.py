"""What localdistil knows about a decorated function: its signature, return type and identity.

A :class:`FunctionSpec` is built once, at decoration time. It binds each call's arguments
canonically (the same call gives the same text however it was spelled), serialises outputs in
the one compact form that training targets and the dispatch grammar share, and carries the
``fingerprint`` that tells an adapter whether it was trained for this version of the function.

Return types: a subclass of ``pydantic.BaseModel`` (generic models included). Anything else is
refused at decoration time; wrap a plain value in a model (``class Answer(BaseModel): value: int``)
because every record, prompt and grammar is built from the model's JSON schema.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import inspect
import json
import re
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from localdistil.errors import DecorationError

#: Parameters left out of bound arguments and prompts: the receiver of a method.
RECEIVER_NAMES = frozenset({"self", "cls"})

_MODULE_PATH = re.compile(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*)")


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: the form every hash in localdistil is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def schema_hash(schema: dict[str, Any]) -> str:
    """The one hash of an output schema in localdistil: SHA-256 of its compact JSON with the
    key order kept. The order of ``properties`` is the order in which the grammar forces the
    fields and in which training targets write them, so a reordered field is another schema."""
    return sha256_hex(json.dumps(schema, separators=(",", ":"), ensure_ascii=False))


def fingerprint(signature: str | None, doc: str | None, output_schema: dict[str, Any]) -> str:
    """What an adapter was trained for: SHA-256 over the rendered signature, the docstring and
    the output schema's :func:`schema_hash` (so a reordered field changes it too)."""
    return sha256_hex(canonical_json(
        {"signature": signature, "doc": doc, "schema_hash": schema_hash(output_schema)}))


def jsonable(value: Any) -> Any:
    """Convert an argument value to JSON-compatible data, canonically.

    Pydantic models, dataclasses, enums, datetimes, UUIDs, decimals and paths go through
    Pydantic's JSON conversion. Sets become lists sorted by their JSON text, so the same set
    renders the same way in every process (string hashing is randomised per process).

    Raises:
        TypeError: the value (or something inside it) has no JSON form.
    """
    if isinstance(value, (set, frozenset)):
        items = [jsonable(item) for item in value]
        return sorted(items, key=canonical_json)
    if isinstance(value, Mapping):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    try:
        return to_jsonable_python(value)
    except Exception as exc:  # pydantic_core.PydanticSerializationError and friends
        raise TypeError(
            f"{type(value).__name__} has no JSON form: {exc}. "
            "Pass a Pydantic model, a dataclass or plain data instead."
        ) from exc


def _annotation_text(annotation: Any) -> str:
    """Render a type annotation without module paths (prompts never show them)."""
    if isinstance(annotation, str):
        text = annotation
    elif isinstance(annotation, type) and not typing.get_args(annotation):
        text = annotation.__qualname__
    else:
        text = inspect.formatannotation(annotation)
    text = re.sub(r"\b[\w.]*<locals>\.", "", text)  # a class defined inside a function
    return _MODULE_PATH.sub("", text).replace("NoneType", "None")


def _default_text(value: Any) -> str:
    """A parameter's default as Python source: ``Color.RED`` for an enum member (whose repr,
    ``<Color.RED: 'red'>``, is not source), else its repr."""
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def _decoration_scope(depth: int = 8) -> dict[str, Any]:
    """Locals of the frames that applied the decorator (up to ``depth`` frames outside
    localdistil, the nearest winning): where a model defined next to a local function lives,
    even when a helper of the caller's applies the decorator."""
    frame = sys._getframe(1)
    scopes = []
    while frame is not None and len(scopes) < depth:
        if not frame.f_globals.get("__name__", "").startswith("localdistil"):
            scopes.append(frame.f_locals)
        frame = frame.f_back
    namespace: dict[str, Any] = {}
    for scope in reversed(scopes):
        namespace.update(scope)
    return namespace


def _resolved_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Type hints with string annotations (``from __future__ import annotations``) resolved
    against the function's globals, its closure and the scope that decorated it."""
    namespace = _decoration_scope()
    try:
        namespace.update(inspect.getclosurevars(fn).nonlocals)
    except (TypeError, ValueError):
        pass
    try:
        return typing.get_type_hints(fn, localns=namespace)
    except Exception:  # an unresolvable name: keep the raw annotations, errors name them
        return dict(getattr(fn, "__annotations__", {}))


@dataclasses.dataclass(frozen=True)
class FunctionSpec:
    """A decorated function as localdistil sees it.

    Attributes:
        name: the name used in prompts and records (``fn``; overridable with ``name=``).
        qualname: ``module:Qualified.name``, recorded to tell functions apart, never prompted.
        signature: ``def fn(a: int, b: int) -> Multiply``, without module paths or receiver.
        doc: the cleaned docstring, or ``None``.
        output_type: the Pydantic model the function returns.
        output_schema: ``output_type``'s JSON schema.
        parameters: the parameter names recorded for each call (receiver excluded).
        fingerprint: SHA-256 over signature, docstring and output schema (:func:`fingerprint`).
        schema_hash: SHA-256 over the output schema alone, field order included
            (:func:`schema_hash`).
    """

    name: str
    qualname: str
    signature: str
    doc: str | None
    output_type: type[BaseModel]
    output_schema: dict[str, Any]
    parameters: tuple[str, ...]
    fingerprint: str
    schema_hash: str
    _signature: inspect.Signature = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None) -> FunctionSpec:
        """Inspect ``fn`` once, at decoration time.

        Raises:
            DecorationError: ``fn`` is not a function, has no return annotation, or its return
                type is not a Pydantic model.
        """
        if not callable(fn):
            raise DecorationError(f"@distil decorates functions; got {type(fn).__name__} {fn!r}.")
        fn_name = getattr(fn, "__name__", type(fn).__name__)
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise DecorationError(f"Cannot read the signature of {fn_name}: {exc}") from exc

        hints = _resolved_hints(fn)
        output_type = hints.get("return", signature.return_annotation)
        where = ".".join(
            filter(None, [getattr(fn, "__module__", None), getattr(fn, "__qualname__", fn_name)])
        )
        if output_type is inspect.Signature.empty:
            raise DecorationError(
                f"{where} has no return annotation. Annotate it with the Pydantic model it "
                f"returns, e.g. `def {fn_name}(...) -> MyModel:`."
            )
        if isinstance(output_type, str):
            raise DecorationError(
                f"{where} returns {output_type!r}, a name localdistil cannot resolve. Define "
                f"{output_type} at module level, or before the function in the same scope."
            )
        if not (isinstance(output_type, type) and issubclass(output_type, BaseModel)):
            shown = _annotation_text(output_type)
            raise DecorationError(
                f"{where} returns {shown}, which is not a Pydantic model. localdistil trains on "
                f"the return type's JSON schema: wrap the value in a model, e.g. "
                f"`class Answer(BaseModel): value: {shown}`, and return that."
            )

        params = [p for p in signature.parameters.values()]
        if params and params[0].name in RECEIVER_NAMES:
            params = params[1:]
        rendered = []
        for p in params:
            text = p.name
            if p.kind is p.VAR_POSITIONAL:
                text = "*" + text
            elif p.kind is p.VAR_KEYWORD:
                text = "**" + text
            annotation = hints.get(p.name, p.annotation)
            if annotation is not inspect.Parameter.empty:
                text += f": {_annotation_text(annotation)}"
            if p.default is not inspect.Parameter.empty:
                text += f" = {_default_text(p.default)}"
            rendered.append(text)
        prompt_name = name or fn_name
        signature_text = (
            f"def {prompt_name}({', '.join(rendered)}) -> {_annotation_text(output_type)}"
        )
        doc = inspect.getdoc(fn) or None
        output_schema = output_type.model_json_schema()
        return cls(
            name=prompt_name,
            qualname=f"{fn.__module__}:{getattr(fn, '__qualname__', fn_name)}",
            signature=signature_text,
            doc=doc,
            output_type=output_type,
            output_schema=output_schema,
            parameters=tuple(p.name for p in params),
            fingerprint=fingerprint(signature_text, doc, output_schema),
            schema_hash=schema_hash(output_schema),
            _signature=signature,
        )

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Bind a call's arguments to the signature, apply defaults, drop the receiver, and
        convert every value to JSON-compatible data. Keys follow the signature's order.

        Raises:
            TypeError: the arguments do not fit the signature, or a value has no JSON form.
        """
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return {
            name: jsonable(value)
            for name, value in bound.arguments.items()
            if name in self.parameters
        }

    def dump_output(self, output: Any) -> dict[str, Any]:
        """The function's result as JSON-compatible data, validated against the return type.

        Raises:
            TypeError: the result is not (and does not validate as) the declared model.
        """
        if not isinstance(output, self.output_type):
            try:
                output = self.output_type.model_validate(output)
            except Exception as exc:
                raise TypeError(
                    f"{self.name} returned {type(output).__name__}, not the declared "
                    f"{self.output_type.__name__}: {exc}"
                ) from exc
        return output.model_dump(mode="json", by_alias=True)

