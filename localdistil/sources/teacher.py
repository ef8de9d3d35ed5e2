"""The teacher: a model that answers chat prompts with objects of a Pydantic type.

Two kinds, one interface (:class:`Teacher`), the same :class:`~localdistil.inference.engine.Outcome`
per prompt:

- :class:`LocalTeacher`: a local model (alias, directory, ``.gguf``) answered by localdistil's
  engine under the type's grammar: every complete answer is JSON of the schema;
- :class:`RemoteTeacher`: any OpenAI-compatible server (vLLM, llama.cpp's server,
  ``localdistil serve --base MODEL``), asked with ``response_format`` = the type's JSON schema
  through the ``openai`` client (``pip install 'localdistil[remote]'``), requests sent
  concurrently so that the server can batch them.

The types asked for are :func:`questions_type` (exactly ``questions.per_chunk`` questions) and
:class:`TeacherAnswer`, which says whether the chunk answers the question at all, before the
answer: a teacher that finds nothing has an explicit way to say so instead of inventing.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
)

from localdistil.errors import LocaldistilError, RecipeError
from localdistil.inference.engine import Outcome

Messages = list[dict[str, str]]


class TeacherAnswer(BaseModel):
    """The teacher's answer to one question about one chunk."""

    model_config = ConfigDict(extra="forbid", title="Answer")

    answerable: bool = Field(description="whether the passage contains the answer")
    answer: str = Field(description="the answer, from the passage; empty when not answerable")


#: What a question looks like: a capital first, one line, a question mark last. Under the grammar,
#: even a weak teacher writes questions rather than fragments of JSON.
QUESTION_PATTERN = r'^[A-Z][^"\\\n]{3,200}\?$'


def _opening(word: str) -> str:
    """A question that begins with ``word``."""
    return rf'^{re.escape(word)} [^"\\\n?]{{3,200}}\?$'


@functools.cache
def questions_type(count: int, openers: tuple[str, ...] = ()) -> type[BaseModel]:
    """``Questions(questions: ...)`` whose schema demands exactly ``count`` questions, each of
    :data:`QUESTION_PATTERN`; with ``openers``, question ``i`` begins with ``openers[i % n]``
    (a tuple of differently constrained strings: a greedy teacher otherwise writes one
    question ``count`` times)."""
    description = f"{count} different questions"
    if openers:
        items = tuple(Annotated[str, StringConstraints(pattern=_opening(openers[i % len(openers)]))]
                      for i in range(count))
        field: Any = (tuple[items], Field(description=description))  # type: ignore[valid-type]
    else:
        question = Annotated[str, StringConstraints(pattern=QUESTION_PATTERN)]
        field = (list[question], Field(min_length=count, max_length=count,
                                       description=description))
    return create_model("Questions", __config__=ConfigDict(extra="forbid"), questions=field)


class Teacher(Protocol):
    """Answers chat prompts with objects of a type: one Outcome per prompt, in order."""

    name: str

    def ask(self, conversations: Sequence[Messages], output_type: type[BaseModel], *,
            max_tokens: int) -> list[Outcome]:
        """Answer each conversation with an ``output_type`` (``Outcome.value``) or say why not
        (``"budget"``: ran out of ``max_tokens``; ``"invalid"``: failed validation)."""


class LocalTeacher:
    """A local model answered by :class:`~localdistil.inference.engine.Engine` (loaded once per
    process), greedily, under the grammar of the type; a batch is one engine call."""

    def __init__(self, reference: str, *, retries: int = 1):
        from localdistil.inference.engine import Engine

        self.name = reference
        self.retries = retries
        self.engine = Engine.for_base(reference)

    def ask(self, conversations: Sequence[Messages], output_type: type[BaseModel], *,
            max_tokens: int) -> list[Outcome]:
        prompts = [self.engine.encode(messages) for messages in conversations]
        return self.engine.answer(prompts, output_type=output_type, max_new_tokens=max_tokens,
                                  retries=self.retries)


class RemoteTeacher:
    """An OpenAI-compatible chat completions server, asked with ``response_format``
    ``json_schema`` (strict), ``concurrency`` requests at a time.

    A request that the server refuses (a 4xx other than authentication, model or URL errors, or
    a 5xx) is that item's ``"invalid"`` outcome; a server that cannot be reached, refuses the
    key, or does not know the model stops the run (:class:`LocaldistilError`).
    """

    def __init__(self, model: str, base_url: str, *, api_key_env: str | None = None,
                 temperature: float = 0.0, timeout: float = 300.0, retries: int = 1,
                 concurrency: int = 4):
        try:
            import openai
        except ImportError:
            raise LocaldistilError(
                "teacher.base_url needs the openai client, which is not installed. Install it "
                "with: pip install 'localdistil[remote]'") from None
        key = "none"  # servers without authentication ignore it; the client wants some value
        if api_key_env is not None:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise RecipeError(f"teacher.api_key_env: the environment variable {api_key_env} "
                                  "is not set. Export it, or remove teacher.api_key_env",
                                  key="teacher.api_key_env")
        self.name = f"{model} at {base_url}"
        self.model = model
        self.base_url = base_url
        self.temperature = temperature
        self.retries = retries
        self.concurrency = concurrency
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout,
                                    max_retries=2)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def ask(self, conversations: Sequence[Messages], output_type: type[BaseModel], *,
            max_tokens: int) -> list[Outcome]:
        schema = output_type.model_json_schema()
        response_format = {"type": "json_schema", "json_schema": {
            "name": output_type.__name__, "schema": schema, "strict": True}}

        def one(messages: Messages) -> Outcome:
            outcome = None
            for attempt in range(1, self.retries + 2):
                outcome = self._request(messages, output_type, response_format, max_tokens,
                                        attempt)
                if outcome.status != "invalid":
                    break
            return outcome

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, conversations))

    def _request(self, messages: Messages, output_type: type[BaseModel],
                 response_format: dict[str, Any], max_tokens: int, attempt: int) -> Outcome:
        openai = self._openai
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, response_format=response_format,
                max_tokens=max_tokens, temperature=self.temperature)
        except openai.APIConnectionError as exc:
            raise LocaldistilError(f"cannot reach the teacher at {self.base_url}: {exc}. Start "
                                   "the server, or correct teacher.base_url") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as exc:
            raise LocaldistilError(f"the teacher at {self.base_url} refused the request "
                                   f"({exc.status_code}: {_message(exc)}). Check "
                                   "teacher.model, teacher.base_url and teacher.api_key_env"
                                   ) from None
        except openai.APIStatusError as exc:
            return Outcome("invalid", "", error=f"server: {exc.status_code} {_message(exc)}",
                           attempts=attempt)
        usage = response.usage
        counts = {"prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                  "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
                  "attempts": attempt}
        choice = response.choices[0]
        text = choice.message.content or ""
        if choice.finish_reason == "length":
            return Outcome("budget", text, **counts)
        try:
            value = output_type.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            return Outcome("invalid", text, error=f"{where}: {first['msg']}" if where
                           else str(first["msg"]), **counts)
        return Outcome("ok", text, value=value, **counts)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return str(getattr(exc, "message", exc))


def make_teacher(section: Any) -> LocalTeacher | RemoteTeacher:
    """The teacher a recipe's ``teacher:`` section describes (a local one loads its model)."""
    if section.base_url is None:
        return LocalTeacher(section.model, retries=section.retries)
    return RemoteTeacher(section.model, section.base_url, api_key_env=section.api_key_env,
                         temperature=section.temperature, timeout=section.timeout,
                         retries=section.retries, concurrency=section.batch_size)
