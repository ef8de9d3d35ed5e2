"""Canonical binding, signature rendering, fingerprints and decoration-time errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Optional

import pytest
from pydantic import BaseModel

from localdistil import DecorationError, FunctionSpec, Instructions
from localdistil.prompts import render_call, render_messages


class Multiply(BaseModel):
    a: int
    b: int
    result: int


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Address(BaseModel):
    street: str
    city: str


class Echo(BaseModel):
    value: str


def fn(a: int, b: int = 7) -> Multiply:
    """Multiply two numbers."""
    return Multiply(a=a, b=b, result=a * b)


def test_positional_and_keyword_spellings_render_byte_identical_prompts():
    spec = FunctionSpec.from_function(fn)
    spellings = [
        spec.bind((133, 539), {}),
        spec.bind((133,), {"b": 539}),
        spec.bind((), {"b": 539, "a": 133}),
    ]
    texts = [
        render_messages(name=spec.name, args=args, style="full", signature=spec.signature)
        for args in spellings
    ]
    assert texts[0] == texts[1] == texts[2]
    assert texts[0][1]["content"] == "Return fn(a=133, b=539)"


def test_defaults_are_applied():
    assert FunctionSpec.from_function(fn).bind((3,), {}) == {"a": 3, "b": 7}


def test_signature_has_no_module_paths_and_fingerprint_is_stable():
    spec = FunctionSpec.from_function(fn)
    assert spec.signature == "def fn(a: int, b: int = 7) -> Multiply"
    assert spec.doc == "Multiply two numbers."
    assert spec.qualname == f"{__name__}:fn"
    assert FunctionSpec.from_function(fn).fingerprint == spec.fingerprint
    assert len(spec.fingerprint) == 64


def test_fingerprint_changes_with_signature_docstring_and_schema_but_schema_hash_only_with_schema():
    def base(a: int) -> Multiply:
        """Doc."""

    def other_doc(a: int) -> Multiply:
        """Another doc."""

    def other_args(a: int, c: int) -> Multiply:
        """Doc."""

    def other_schema(a: int) -> Echo:
        """Doc."""

    specs = [
        FunctionSpec.from_function(f, name="f")
        for f in (base, other_doc, other_args, other_schema)
    ]
    assert len({s.fingerprint for s in specs}) == 4
    assert (
        specs[0].schema_hash == specs[1].schema_hash == specs[2].schema_hash
        != specs[3].schema_hash
    )


def test_rich_argument_types_become_canonical_json():
    def f(
        when: dt.datetime,
        day: dt.date,
        ident: uuid.UUID,
        color: Color,
        point: Point,
        address: Address,
        tags: set[str],
        nested: dict[str, list[tuple[int, int]]],
        price: Decimal,
        # Optional[...] on purpose: the rendered signature must keep this spelling (asserted below)
        note: Optional[str] = None,  # noqa: UP045
    ) -> Echo: ...

    spec = FunctionSpec.from_function(f)
    args = spec.bind(
        (dt.datetime(2024, 5, 1, 12, 30), dt.date(2024, 5, 2), uuid.UUID(int=1), Color.RED,
         Point(1.5, 2.0), Address(street="1 Main St", city="Oslo"), {"zeta", "alpha", "mid"},
         {"k": [(1, 2)]}, Decimal("9.99")),
        {},
    )
    assert args == {
        "when": "2024-05-01T12:30:00",
        "day": "2024-05-02",
        "ident": "00000000-0000-0000-0000-000000000001",
        "color": "red",
        "point": {"x": 1.5, "y": 2.0},
        "address": {"street": "1 Main St", "city": "Oslo"},
        "tags": ["alpha", "mid", "zeta"],
        "nested": {"k": [[1, 2]]},
        "price": "9.99",
        "note": None,
    }
    assert (
        render_call("f", {"tags": args["tags"], "note": None})
        == 'f(tags=["alpha","mid","zeta"], note=null)'
    )
    assert (
        "Optional[str]" in spec.signature
        and "datetime" in spec.signature
        and "datetime.datetime" not in spec.signature
    )


def test_object_keys_render_sorted_so_equal_dicts_give_equal_text():
    assert render_call("f", {"d": {"b": 1, "a": 2}}) == render_call("f", {"d": {"a": 2, "b": 1}})


def test_values_without_json_form_raise_type_error():
    def f(x: object) -> Echo: ...

    with pytest.raises(TypeError, match="no JSON form"):
        FunctionSpec.from_function(f).bind((object(),), {})


def test_methods_leave_out_self_and_cls():
    class Calc:
        def mul(self, a: int, b: int) -> Multiply: ...

        @classmethod
        def make(cls, a: int) -> Multiply: ...

    spec = FunctionSpec.from_function(Calc.mul)
    assert spec.signature == "def mul(a: int, b: int) -> Multiply"
    assert spec.bind((Calc(), 2, 3), {}) == {"a": 2, "b": 3}
    assert FunctionSpec.from_function(Calc.__dict__["make"].__func__).parameters == ("a",)


def test_string_annotations_from_future_import_are_resolved():
    # this module uses `from __future__ import annotations`: every annotation is a string
    assert FunctionSpec.from_function(fn).output_type is Multiply


def test_name_override_is_used_in_signature_and_prompts():
    spec = FunctionSpec.from_function(fn, name="multiply_v2")
    assert spec.name == "multiply_v2" and spec.signature.startswith("def multiply_v2(")


class TestDecorationErrors:
    def test_missing_return_annotation(self):
        def f(a):
            return a

        with pytest.raises(DecorationError, match="no return annotation.*-> MyModel"):
            Instructions().distil(f)

    def test_return_type_not_a_model_suggests_wrapping(self):
        def f(a: int) -> int:
            return a

        with pytest.raises(
            DecorationError, match=r"returns int, which is not a Pydantic model.*value: int"
        ):
            Instructions().distil(f)

    def test_optional_model_is_refused(self):
        # the typing.Optional spelling, as user code often writes it
        def f(a: int) -> Optional[Echo]: ...  # noqa: UP045

        with pytest.raises(DecorationError, match="not a Pydantic model"):
            Instructions().distil(f)

    def test_unknown_mode(self):
        with pytest.raises(DecorationError, match="Unknown mode 'serve'"):
            Instructions().distil(mode="serve")

    def test_unknown_format_on_instructions_and_decorator(self):
        with pytest.raises(DecorationError, match="Unknown finetune_format 'csv'"):
            Instructions(finetune_format="csv")
        with pytest.raises(DecorationError, match="Unknown finetune_format 'csv'"):
            Instructions().distil(fine_tune_format="csv")

    def test_decoration_errors_are_localdistil_errors_and_type_errors(self):
        from localdistil import LocaldistilError

        assert (
            issubclass(DecorationError, LocaldistilError)
            and issubclass(DecorationError, TypeError)
        )


def test_completion_text_is_exactly_pydantics_json():
    from localdistil.prompts import render_completion

    class Reading(BaseModel):
        value: float
        note: str

    for value in (1e-5, 1e-7, 0.1, 1e16, 2.5):
        model = Reading(value=value, note='café\n\x1f "q" / \\')
        assert render_completion(model.model_dump(mode="json")) == model.model_dump_json()


def test_an_unresolvable_return_annotation_is_named():
    namespace: dict = {}
    # a string annotation: this module uses PEP 563
    exec("def f(a: int) -> NoSuchModel: ...", namespace)
    with pytest.raises(
        DecorationError, match="^f returns 'NoSuchModel', a name localdistil cannot resolve"
    ):
        Instructions().distil(namespace["f"])


def test_the_signature_is_python_source_for_local_classes_and_enum_defaults():
    class Color(enum.Enum):
        RED = "red"

    def make():
        class Order(BaseModel):
            x: int

        def paint(color: Color = Color.RED, order: Order | None = None) -> Order: ...

        return FunctionSpec.from_function(paint)

    signature = make().signature
    assert signature == "def paint(color: Color = Color.RED, order: Order | None = None) -> Order"
    compile(signature + ": pass", "<signature>", "exec")  # what the server parses it as
