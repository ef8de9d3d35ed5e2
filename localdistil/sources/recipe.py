"""The synth recipe: a YAML file validated into a :class:`SynthRecipe`.

A recipe starts with a comment giving the command that runs it::

    # python -m localdistil synth examples/docs_qa/synth.yaml
    source: {paths: [README.md, docs/]}
    chunk: {unit: tokens, tokenizer: smollm2-135m, size: 384, overlap: 32}
    teacher: {model: smollm2-135m}        # or {model: NAME, base_url: http://host:8000/v1}
    questions: {per_chunk: 3}
    filters: {near_duplicate: 0.8, grounding: 0.5}
    function: {name: answer, parameter: question, output: Answer}
    output: {dir: synth/docs_qa}

Only ``source.paths`` and ``teacher.model`` are required; every key is documented where it is
declared. As in training recipes, unknown keys are errors that suggest the nearest valid key, a
key given twice is an error, every message names the dotted key, and ``key=value`` overrides
(values parsed as YAML) change one field: ``chunk.max_chunks=3 questions.per_chunk=2``.

Cross-field rules: ``chunk.overlap`` must be smaller than ``chunk.size``; ``teacher.api_key_env``
and a non-zero ``teacher.temperature`` need ``teacher.base_url`` (the local engine decodes
greedily); every template uses only the known placeholders and the ones it needs.

Relative paths are resolved against the current working directory: run from the project root.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    create_model,
    field_validator,
    model_validator,
)

from localdistil.config import CheckFailed, read_yaml, validate
from localdistil.sources import templates

__all__ = ["AnswersSection", "ChunkSection", "FiltersSection", "FunctionSection",
           "OutputSection", "QuestionsSection", "SourceSection", "SynthRecipe", "TeacherSection",
           "load_synth_recipe", "parse_synth_recipe"]

_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSection(_Section):
    """``source:`` the documents to learn from."""

    paths: list[_Text] = Field(min_length=1, description=(
        "files, globs or directories of documents, e.g. [README.md, docs/]; directories are "
        "searched recursively for .md .markdown .txt .rst .html .htm .jsonl files"))
    jsonl_field: _Text = Field("text", description=(
        "the field that holds the text in each line of a .jsonl file"))

    @field_validator("paths", mode="before")
    @classmethod
    def _wrap_single_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ChunkSection(_Section):
    """``chunk:`` how documents are cut into passages, at paragraph and sentence boundaries
    where possible."""

    unit: Literal["tokens", "characters"] = Field("tokens", description=(
        "what chunk.size and chunk.overlap count: tokens of chunk.tokenizer, or characters"))
    tokenizer: _Text = Field("smollm2-135m", description=(
        "the model whose tokenizer counts tokens: the student you will train (an alias, local "
        "directory or .gguf); unused with unit: characters"))
    size: int = Field(384, gt=0, description="the most tokens (or characters) in one chunk")
    overlap: int = Field(32, ge=0, description=(
        "tokens (or characters) a chunk may repeat from the end of the one before, whole "
        "sentences only; smaller than chunk.size"))
    max_chunks: int | None = Field(None, gt=0, description=(
        "use only the first this many chunks (files in sorted order), e.g. for a quick look; "
        "null = all"))

    @model_validator(mode="after")
    def _check_overlap(self) -> ChunkSection:
        if self.overlap >= self.size:
            raise CheckFailed("chunk.overlap", (
                f"chunk.overlap ({self.overlap}) must be smaller than chunk.size ({self.size}), "
                "or no chunk would move past the one before. Lower chunk.overlap (e.g. to "
                f"{self.size // 8}) or raise chunk.size"))
        return self


class TeacherSection(_Section):
    """``teacher:`` the model that writes the questions and answers, always under the JSON
    schema of a Pydantic type."""

    model: _Text = Field(description=(
        "without base_url: a local model (alias such as smollm2-135m, directory or .gguf) "
        "answered by localdistil's engine under the grammar; with base_url: the model name "
        "the server serves"))
    base_url: _Text | None = Field(None, description=(
        "an OpenAI-compatible server to ask instead (vLLM, llama.cpp, localdistil serve), "
        "e.g. http://127.0.0.1:8000/v1; needs pip install 'localdistil[remote]'"))
    api_key_env: _Text | None = Field(None, description=(
        "the environment variable that holds the server's API key (only with base_url); "
        "null = no key"))
    batch_size: int = Field(4, gt=0, description=(
        "chunks generated together: one batch for the local engine, concurrent requests for "
        "a server"))
    retries: int = Field(1, ge=0, description=(
        "times an answer that fails the type's validation is generated again"))
    temperature: float = Field(0.0, ge=0, le=2, description=(
        "sampling temperature of a server (base_url); the local engine decodes greedily (0)"))
    timeout: float = Field(300.0, gt=0, description="seconds a server request may take")

    @model_validator(mode="after")
    def _check_remote_only(self) -> TeacherSection:
        if self.base_url is None:
            if self.api_key_env is not None:
                raise CheckFailed("teacher.api_key_env", (
                    "teacher.api_key_env is set without teacher.base_url: a key is only sent to "
                    "a server. Set teacher.base_url, or remove teacher.api_key_env"))
            if self.temperature != 0:
                raise CheckFailed("teacher.temperature", (
                    "teacher.temperature is only used with teacher.base_url: the local engine "
                    "decodes greedily. Set it to 0, or set teacher.base_url"))
        return self


class QuestionsSection(_Section):
    """``questions:`` what the teacher is asked for each chunk: a ``Questions`` object."""

    per_chunk: int = Field(3, ge=1, le=50, description=(
        "questions asked per chunk (the schema demands exactly this many), 1 to 50"))
    max_tokens: int = Field(256, gt=0, description=(
        "token budget of one chunk's questions; an answer that runs out is a rejected item"))
    openers: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z' -]*$")]] = Field(
        [], description=(
            "words the questions must begin with, question i with openers[i % n] (e.g. [What, "
            "How, Which]): steers a weak teacher, which otherwise repeats one question; leave "
            "empty for a strong teacher"))
    system: str = Field(templates.QUESTIONS_SYSTEM, description=(
        "the system message (a template: {chunk} {source} {count})"))
    user: str = Field(templates.QUESTIONS_USER, description=(
        "the user message (a template: {chunk} {source} {count}); it must show {chunk}"))

    @model_validator(mode="after")
    def _check_templates(self) -> QuestionsSection:
        _check_templates("questions", self.system, self.user, allowed={"chunk", "source", "count"},
                         required={"chunk"})
        return self


class AnswersSection(_Section):
    """``answers:`` what the teacher is asked for each question: an ``Answer`` object that says
    whether the chunk answers it at all."""

    max_tokens: int = Field(256, gt=0, description=(
        "token budget of one answer; an answer that runs out is a rejected item"))
    system: str = Field(templates.ANSWERS_SYSTEM, description=(
        "the system message (a template: {chunk} {source} {question})"))
    user: str = Field(templates.ANSWERS_USER, description=(
        "the user message (a template: {chunk} {source} {question}); the two messages together "
        "must show {chunk} and {question}"))

    @model_validator(mode="after")
    def _check_templates(self) -> AnswersSection:
        _check_templates("answers", self.system, self.user,
                         allowed={"chunk", "source", "question"}, required={"chunk", "question"})
        return self


class FiltersSection(_Section):
    """``filters:`` what is rejected (into ``rejects.jsonl``, counted in the report)."""

    near_duplicate: float = Field(0.8, gt=0, le=1, description=(
        "a question whose word set overlaps an earlier one's by this Jaccard share or more is a "
        "near duplicate, 0 to 1 (1 = identical word sets only; exact repeats always count)"))
    grounding: float = Field(0.5, ge=0, le=1, description=(
        "the share of an answer's content words that must appear in its chunk, 0 to 1 "
        "(0 = no check)"))


class FunctionSection(_Section):
    """``function:`` the function the records teach: ``name(parameter: str) -> Output`` where
    ``Output`` is a model with one field, ``answer: str``."""

    name: _Identifier = Field("answer", description=(
        "the function's name in prompts and records (data.function in the training recipe)"))
    parameter: _Identifier = Field("question", description="its one parameter, a str")
    output: _Identifier = Field("Answer", description=(
        "the name of its return type, a Pydantic model with one field: answer: str"))
    doc: str | None = Field(None, description=(
        "its docstring, part of its fingerprint: dispatch needs the same one; null = none"))

    def make(self) -> Callable[..., BaseModel]:
        """A real function object with this signature (its body is never called), from which
        records are built exactly as a traced function's would be: ``def answer(question: str)
        -> Answer`` where ``class Answer(BaseModel): answer: str``."""
        output = create_model(self.output, answer=(str, ...))
        output.__module__ = "localdistil.sources"

        def function(**kwargs: Any) -> BaseModel:
            raise NotImplementedError("a synthesised function: dispatch it through its adapter")

        parameter = inspect.Parameter(self.parameter, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                      annotation=str)
        function.__signature__ = inspect.Signature([parameter], return_annotation=output)
        function.__annotations__ = {self.parameter: str, "return": output}
        function.__name__ = function.__qualname__ = self.name
        function.__module__ = "localdistil.sources"
        function.__doc__ = self.doc
        return function


class OutputSection(_Section):
    """``output:`` where the records go."""

    dir: _Text = Field("synth/output", description=(
        "the directory of records.jsonl (train on it), rejects.jsonl, done.jsonl and synth.json"))
    finetune_format: Literal["messages", "tools", "raw"] = Field("messages", description=(
        "the record format, as Instructions(finetune_format=...) writes it"))


class SynthRecipe(_Section):
    """A validated synth recipe. Build one with :func:`load_synth_recipe` or
    :func:`parse_synth_recipe`; ``source`` is the file it came from (not part of equality)."""

    source: SourceSection = Field(description=(
        "the documents, e.g. source: {paths: [README.md, docs/]}"))
    chunk: ChunkSection = Field(default_factory=ChunkSection, description="how they are cut")
    teacher: TeacherSection = Field(description=(
        "the model that writes questions and answers, e.g. teacher: {model: smollm2-135m}"))
    questions: QuestionsSection = Field(default_factory=QuestionsSection,
                                        description="questions per chunk")
    answers: AnswersSection = Field(default_factory=AnswersSection,
                                    description="an answer per question")
    filters: FiltersSection = Field(default_factory=FiltersSection,
                                    description="what is rejected")
    function: FunctionSection = Field(default_factory=FunctionSection,
                                      description="the function the records teach")
    output: OutputSection = Field(default_factory=OutputSection, description="where it goes")

    _source: Path | None = PrivateAttr(None)

    @property
    def source_file(self) -> Path | None:
        """The recipe file this came from, or ``None``."""
        return self._source

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-compatible data, every default filled in."""
        return self.model_dump(mode="json")

    def generation_settings(self) -> dict[str, Any]:
        """What decides the records of a chunk: everything but ``output`` and
        ``chunk.max_chunks``. A rerun into the same ``output.dir`` must have the same."""
        settings = self.as_dict()
        settings.pop("output")
        settings["chunk"].pop("max_chunks")
        return settings

    def to_yaml(self) -> str:
        """The recipe as YAML that :func:`load_synth_recipe` reads back into an equal one."""
        return yaml.safe_dump(self.as_dict(), sort_keys=False, allow_unicode=True)


def _check_templates(section: str, system: str, user: str, *, allowed: set[str],
                     required: set[str]) -> None:
    for name, template in (("system", system), ("user", user)):
        unknown = templates.placeholders(template) - allowed
        if unknown:
            listed = ", ".join("{" + n + "}" for n in sorted(allowed))
            raise CheckFailed(f"{section}.{name}", (
                f"{section}.{name} uses {', '.join('{' + n + '}' for n in sorted(unknown))}, "
                f"which is not a placeholder here. Use {listed}, or write the braces some other "
                "way"))
    missing = required - templates.placeholders(system) - templates.placeholders(user)
    if missing:
        raise CheckFailed(f"{section}.user", (
            f"neither {section}.system nor {section}.user shows "
            f"{', '.join('{' + n + '}' for n in sorted(missing))}; the teacher needs it. Add it "
            f"to {section}.user"))


# -- loading -------------------------------------------------------------------------------------


def load_synth_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> SynthRecipe:
    """Read the YAML recipe at ``path``, apply ``key=value`` ``overrides`` in order, validate.

    Raises:
        RecipeError: the file is missing or unreadable, is not valid YAML (file, line and
            column given), or does not describe a valid recipe (every problem listed as
            ``<dotted.key>: <what is wrong>. <how to fix>``; ``.key`` is the first).
    """
    raw = read_yaml(path, example="examples/docs_qa/synth.yaml")
    return parse_synth_recipe(raw, overrides, source=path)


def parse_synth_recipe(data: Any, overrides: Sequence[str] = (), *,
                       source: str | os.PathLike[str] | None = None) -> SynthRecipe:
    """Validate a recipe given as a mapping (what the YAML file holds), after ``overrides``.

    Raises :class:`RecipeError` as :func:`load_synth_recipe` does.
    """
    recipe = validate(SynthRecipe, data, overrides, source=source, what="synth recipe",
                      needs="source: {paths: [...]} and teacher: {model: ...}")
    recipe._source = None if source is None else Path(source)
    return recipe
