"""YAML recipe files, as localdistil reads them: a key given twice is an error, ``key=value``
overrides change one field, and every validation error names the dotted key, suggests the
nearest valid one and reuses the field's own description as the hint.

Shared ground: the training recipe (:mod:`localdistil.training.recipe`) and the synth recipe
(:mod:`localdistil.sources.recipe`) are both read by :func:`read_yaml` and validated by
:func:`validate`, so their files and their errors behave alike.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from localdistil.errors import RecipeError

R = TypeVar("R", bound=BaseModel)


def validate(root: type[R], data: Any, overrides: Sequence[str] = (), *, source: Any = None,
             what: str = "recipe", needs: str = "") -> R:
    """``data`` (what a recipe file holds) validated as ``root`` after ``overrides``.

    Args:
        root: the recipe model.
        data: the mapping read from the file.
        overrides: ``dotted.key=value`` strings, applied in order.
        source: the file, named in messages.
        what: how messages name the recipe (``"recipe"``, ``"synth recipe"``).
        needs: what an empty recipe must hold at least, for its message.

    Raises:
        RecipeError: every problem listed as ``<dotted.key>: <what is wrong>. <how to fix>``;
            ``.key`` is the first.
    """
    where = f"{source}: " if source is not None else ""
    if data is None:
        raise RecipeError(f"{where}the {what} is empty. It needs at least {needs}")
    if not isinstance(data, Mapping):
        keys = ", ".join(f"{name}:" for name in list(root.model_fields)[:2])
        raise RecipeError(f"{where}the top level of a {what} must be a mapping of keys "
                          f"({keys} ...), not a {type(data).__name__}")
    raw = copy.deepcopy(dict(data))
    for override in [overrides] if isinstance(overrides, str) else overrides:
        apply_override(raw, override, root)
    try:
        return root.model_validate(raw)
    except ValidationError as exc:
        lines: dict[str, str] = {}
        for error in exc.errors():
            key, line = describe(error, root)
            lines.setdefault(key, line)  # a union reports each failed branch: keep the first
        header = f"Invalid {what} {source}:" if source is not None else f"Invalid {what}:"
        raise RecipeError("\n  ".join([header, *lines.values()]), key=next(iter(lines))) from None


class CheckFailed(ValueError):
    """A cross-field check failed on ``key`` (a dotted YAML key); the message names every key
    involved. Raise it from a ``model_validator``."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


def read_yaml(path: str | os.PathLike[str], *, example: str) -> Any:
    """The YAML document in ``path`` (duplicate keys refused).

    Raises:
        RecipeError: the file is missing or unreadable, or not valid YAML (with its file, line
            and column); ``example`` is a path shown as what a right one looks like.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{source}: no such recipe file (relative paths start at {Path.cwd()})."
                          f" Check the path, e.g. {example}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{source}: cannot read the recipe: {exc}") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(source)
        parts = (getattr(exc, "context", None), getattr(exc, "problem", None))
        problem = " ".join(str(part) for part in parts if part) or str(exc)
        raise RecipeError(f"{where}: invalid YAML: {problem}. Fix the file at that line") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    problem = f"the key {key_node.value!r} appears twice in one mapping; keep one"
                    raise yaml.constructor.ConstructorError(None, None, problem,
                                                            key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def section_of(section: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The section model the field ``name`` of ``section`` holds, or None for a plain value."""
    annotation = section.model_fields[name].annotation
    is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_section else None


def unknown_key(key: str, section: type[BaseModel]) -> str:
    """The message for an unknown dotted ``key`` under ``section``: the nearest valid key, or
    all of them."""
    prefix, _, name = key.rpartition(".")
    valid = list(section.model_fields)
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return f"{key}: unknown key. Did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
    under = f" under {prefix}" if prefix else ""
    return f"{key}: unknown key. Valid keys{under}: {', '.join(valid)}"


def apply_override(raw: dict[str, Any], override: str, root: type[BaseModel]) -> None:
    """Set one ``dotted.key=value`` in the raw mapping of a ``root`` recipe (the value parsed
    as YAML).

    Raises:
        RecipeError: not ``key=value``, a value that is not YAML, or a key ``root`` lacks.
    """
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override {override!r} is not key=value. Write e.g. section.key=value",
                          key=key or None)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        raise RecipeError(f"override {override!r}: the value is not valid YAML ({problem}). "
                          f"Correct it, or quote a string: {key}=\"'text'\"", key=key) from None
    parts: list[str] = key.split(".")
    section: type[BaseModel] | None = root
    target = raw
    for depth, name in enumerate(parts):
        dotted = ".".join(parts[: depth + 1])
        if section is None:
            raise RecipeError(f"override {override!r}: {'.'.join(parts[:depth])} is a value, "
                              f"not a section, so it has no key {name!r}", key=dotted)
        if name not in section.model_fields:
            raise RecipeError(f"override {override!r}: {unknown_key(dotted, section)}", key=dotted)
        if depth == len(parts) - 1:
            target[name] = value
            return
        if target.get(name) is None:
            target[name] = {}
        if not isinstance(target[name], dict):
            raise RecipeError(f"override {override!r}: {dotted} in the recipe is "
                              f"{target[name]!r}, not a section. Make it a mapping first",
                              key=dotted)
        section, target = section_of(section, name), target[name]


def describe(error: Any, root: type[BaseModel]) -> tuple[str, str]:
    """One pydantic error of a ``root`` recipe as (dotted key, ``<key>: <what is wrong>. <how
    to fix>``); a :class:`CheckFailed` raised by a validator names its own key."""
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, CheckFailed):
        return cause.key, f"{cause.key}: {cause}"
    key: str = ""
    section: type[BaseModel] | None = root
    field = None
    for part in error["loc"]:
        if section is not None:
            key = f"{key}.{part}" if key else str(part)
            if part not in section.model_fields:
                return key, unknown_key(key, section)
            field, section = section.model_fields[part], section_of(section, part)
        elif isinstance(part, int):
            key += f"[{part}]"
    expected = f"; expected: {field.description}" if field is not None and field.description else ""
    if error["type"] == "missing":
        return key, f"{key}: required key is missing. Add it{expected}"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(cause, ValueError):
        return key, f"{key}: {message}"
    got = repr(error["input"])
    got = got if len(got) <= 60 else got[:57] + "..."
    return key, f"{key}: {message} (got {got}). Fix the value{expected}"
