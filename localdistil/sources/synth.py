"""The document pipeline: documents -> chunks -> typed questions -> typed answers -> records.

    python -m localdistil synth examples/docs_qa/synth.yaml [KEY=VALUE ...] [--show-prompts]

:func:`synthesize` runs a :class:`~localdistil.sources.recipe.SynthRecipe`: it loads the
documents, cuts them into chunks, asks the teacher for ``questions.per_chunk`` questions per
chunk and for an answer to each, filters (:mod:`localdistil.sources.filters`), and writes into
``output.dir``:

- ``records.jsonl``: one record per accepted answer, built by
  :class:`~localdistil.records.build.RecordBuilder` from the recipe's function (``def
  answer(question: str) -> Answer``), so ``localdistil records stats`` and ``train`` take it
  as a traced function's; each record's ``extra`` holds its chunk's provenance;
- ``rejects.jsonl``: every item left out, with its reason;
- ``done.jsonl``: the hash of each chunk whose records and rejects are written;
- ``synth.json``: the recipe as run.

Resuming: a rerun skips the chunks in ``done.jsonl`` and appends
(:mod:`~localdistil.sources.output` says how a killed run's leftovers are repaired). A kill
loses the chunks of the batch in progress (``teacher.batch_size`` chunks are generated
together), never a finished one, and never duplicates one. A rerun with other generation
settings (anything but ``output`` and ``chunk.max_chunks``) into the same directory is refused:
choose another ``output.dir`` or pass ``overwrite=True`` (``--overwrite``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from localdistil.errors import RecipeError
from localdistil.records.build import RecordBuilder
from localdistil.sources import templates
from localdistil.sources.chunk import Chunk, chunk_documents, measure_for
from localdistil.sources.filters import REASONS, QuestionFilter, Reject, check_answer
from localdistil.sources.load import Skipped, load_documents
from localdistil.sources.output import RECORDS, REJECTS, prepare_output, write_chunk
from localdistil.sources.recipe import SynthRecipe
from localdistil.sources.teacher import (
    Messages,
    Teacher,
    TeacherAnswer,
    make_teacher,
    questions_type,
)
from localdistil.spec import FunctionSpec

#: How an unanswered item's outcome status reads in ``rejects.jsonl``.
_UNFINISHED = {"budget": "ran out of tokens ({key}={budget})", "invalid": "{error}"}


@dataclasses.dataclass
class SynthReport:
    """What a run of :func:`synthesize` did.

    Attributes:
        output_dir: where the files are.
        documents: documents loaded.
        skipped: files (or lines) that gave no document, with the reason.
        chunks: chunks in this run (after ``chunk.max_chunks``).
        repeated: chunks whose text equals an earlier chunk's (generated once).
        done_before: chunks an earlier run had finished (skipped now).
        generated: chunks generated now.
        questions_asked: questions asked for (``per_chunk`` x chunks generated).
        questions: questions received.
        records: records written now.
        records_total: records in ``records.jsonl`` after the run.
        rejects: this run's rejects by reason (every reason listed, 0 included).
        prompt_tokens: teacher prompt tokens, completion_tokens: teacher output tokens.
        seconds: the run's wall time.
    """

    output_dir: Path
    documents: int = 0
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    chunks: int = 0
    repeated: int = 0
    done_before: int = 0
    generated: int = 0
    questions_asked: int = 0
    questions: int = 0
    records: int = 0
    records_total: int = 0
    rejects: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(REASONS, 0))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def records_path(self) -> Path:
        """The file to train on."""
        return self.output_dir / RECORDS

    def format(self) -> str:
        """The report as a table for the terminal."""
        rows = [("documents", f"{self.documents} loaded, {len(self.skipped)} skipped")]
        rows += [("  skipped", str(skip)) for skip in self.skipped[:20]]
        if len(self.skipped) > 20:
            rows.append(("", f"... and {len(self.skipped) - 20} more"))
        repeated = f", {self.repeated} repeat an earlier chunk" if self.repeated else ""
        rows.append(("chunks", f"{self.chunks}: {self.generated} generated, "
                               f"{self.done_before} done by an earlier run{repeated}"))
        rows.append(("questions", f"{self.questions} received of {self.questions_asked} "
                                  "asked for"))
        rows.append(("records", f"{self.records} written ({self.records_total} in "
                                f"{self.records_path})"))
        rows.append(("rejected", f"{sum(self.rejects.values())} (each in "
                                 f"{self.output_dir / REJECTS})"))
        rows += [(f"  {reason}", str(count)) for reason, count in self.rejects.items()]
        rows.append(("teacher tokens", f"{self.prompt_tokens} prompt, "
                                       f"{self.completion_tokens} completion"))
        rows.append(("time", f"{self.seconds:.1f} s"))
        width = max(len(label) for label, _ in rows) + 2
        return "\n".join(f"{label:<{width}}{value}" for label, value in rows)


def question_messages(recipe: SynthRecipe, chunk: Chunk) -> Messages:
    """The teacher's prompt for a chunk's questions."""
    values = {"chunk": chunk.text, "source": chunk.source, "count": recipe.questions.per_chunk}
    return _messages(recipe.questions.system, recipe.questions.user, values)


def answer_messages(recipe: SynthRecipe, chunk: Chunk, question: str) -> Messages:
    """The teacher's prompt for the answer to one question about a chunk."""
    values = {"chunk": chunk.text, "source": chunk.source, "question": question}
    return _messages(recipe.answers.system, recipe.answers.user, values)


def _messages(system: str, user: str, values: dict[str, Any]) -> Messages:
    messages = [{"role": "user", "content": templates.render(user, values)}]
    if system.strip():
        messages.insert(0, {"role": "system", "content": templates.render(system, values)})
    return messages


def load_chunks(recipe: SynthRecipe, *, progress: bool = False) -> tuple[list[Chunk], Any]:
    """The recipe's chunks (``chunk.max_chunks`` applied) and the documents it loaded
    (:class:`~localdistil.sources.load.Loaded`).

    Raises:
        RecipeError: ``source.paths`` matches nothing, or gives no document at all.
    """
    loaded = load_documents(recipe.source.paths, jsonl_field=recipe.source.jsonl_field,
                            progress=progress)
    if not loaded.documents:
        reasons = "; ".join(str(skip) for skip in loaded.skipped[:5])
        raise RecipeError(f"source.paths: no document could be read ({reasons})",
                          key="source.paths")
    measure = measure_for(recipe.chunk.unit, recipe.chunk.tokenizer)
    chunks = chunk_documents(loaded.documents, measure, size=recipe.chunk.size,
                             overlap=recipe.chunk.overlap)
    return chunks[: recipe.chunk.max_chunks], loaded


def show_prompts(recipe: SynthRecipe) -> str:
    """The teacher's prompts rendered for the first chunk, and the schemas it answers under
    (``--show-prompts``). Loads no model but the tokenizer that counts chunk tokens."""
    chunks, _ = load_chunks(recipe)
    chunk = chunks[0]
    question = "<each question the teacher wrote>"
    parts = [f"# {len(chunks)} chunk(s); the first: {chunk.source}, characters "
             f"{chunk.start}-{chunk.end}"]
    for title, messages, output_type in (
            ("questions prompt, once per chunk", question_messages(recipe, chunk),
             questions_type(recipe.questions.per_chunk,
                            tuple(recipe.questions.openers))),
            ("answer prompt, once per question", answer_messages(recipe, chunk, question),
             TeacherAnswer)):
        parts.append(f"\n=== {title} ===")
        parts += [f"--- {m['role']} ---\n{m['content']}" for m in messages]
        parts.append(f"--- answered as JSON of ---\n{json.dumps(output_type.model_json_schema())}")
    return "\n".join(parts)


def synthesize(recipe: SynthRecipe, *, teacher: Teacher | None = None, overwrite: bool = False,
               progress: bool = False) -> SynthReport:
    """Run the recipe: generate, filter and write the records of every chunk not done yet.

    Args:
        recipe: the validated recipe.
        teacher: answers the prompts; default the recipe's ``teacher:`` (a local model is
            loaded once per process).
        overwrite: start over, deleting the files of an earlier run in ``output.dir``.
        progress: show progress bars (tqdm) for loading, questions and answers.

    Raises:
        RecipeError: no documents, or ``output.dir`` holds a run with other settings.
        ModelError: the tokenizer or the local teacher cannot be loaded.
        LocaldistilError: the teacher's server cannot be reached or refuses the requests.
    """
    started = time.monotonic()
    out = Path(recipe.output.dir)
    chunks, loaded = load_chunks(recipe, progress=progress)
    state = prepare_output(out, recipe, overwrite=overwrite)
    report = SynthReport(out, documents=len(loaded.documents), skipped=loaded.skipped,
                         chunks=len(chunks))
    pending: dict[str, Chunk] = {}
    for chunk in chunks:
        if chunk.hash in state.done:
            report.done_before += 1
        elif chunk.hash in pending:
            report.repeated += 1
        else:
            pending[chunk.hash] = chunk
    own_teacher = pending and teacher is None
    if own_teacher:
        teacher = make_teacher(recipe.teacher)
    spec = FunctionSpec.from_function(recipe.function.make(), name=recipe.function.name)
    builder = RecordBuilder(spec, finetune_format=recipe.output.finetune_format)
    work = _Work(recipe, teacher, spec, builder, state.questions, report)
    todo = list(pending.values())
    try:
        with _Progress(progress, len(todo), recipe.questions.per_chunk) as bars:
            for first in range(0, len(todo), recipe.teacher.batch_size):
                batch = todo[first:first + recipe.teacher.batch_size]
                for chunk, records, rejects in work.run(batch, bars):
                    write_chunk(out, chunk, records, rejects)
                    report.generated += 1
                    report.records += len(records)
    finally:
        if own_teacher and hasattr(teacher, "close"):
            teacher.close()
    report.records_total = state.records + report.records
    report.seconds = time.monotonic() - started
    return report


@dataclasses.dataclass
class _Work:
    """One batch of chunks through the teacher and the filters."""

    recipe: SynthRecipe
    teacher: Any
    spec: FunctionSpec
    builder: RecordBuilder
    questions: QuestionFilter
    report: SynthReport

    def run(self, batch: Sequence[Chunk], bars: Any
            ) -> Iterable[tuple[Chunk, list[dict[str, Any]], list[Reject]]]:
        recipe, report = self.recipe, self.report
        rejects: dict[str, list[Reject]] = {chunk.hash: [] for chunk in batch}
        count = recipe.questions.per_chunk
        outcomes = self.teacher.ask([question_messages(recipe, c) for c in batch],
                                    questions_type(count, tuple(recipe.questions.openers)),
                                    max_tokens=recipe.questions.max_tokens)
        asked: list[tuple[Chunk, str]] = []
        for chunk, outcome in zip(batch, outcomes):
            self._count(outcome)
            report.questions_asked += count
            if not outcome.ok:
                rejects[chunk.hash].append(self._unfinished(
                    outcome, "questions", chunk, "questions.max_tokens",
                    recipe.questions.max_tokens))
                continue
            for question in (q.strip() for q in outcome.value.questions):
                report.questions += 1
                found = self.questions.check(question)
                if found is not None:
                    rejects[chunk.hash].append(self._reject(found, "questions", chunk, question))
                else:
                    self.questions.accept(question)  # answered or not, it has been asked
                    asked.append((chunk, question))
        bars.questions(len(batch), unasked=count * len(batch) - len(asked))
        started = time.monotonic()
        answers = self.teacher.ask([answer_messages(recipe, c, q) for c, q in asked],
                                   TeacherAnswer, max_tokens=recipe.answers.max_tokens
                                   ) if asked else []
        share = (time.monotonic() - started) / max(1, len(asked))
        records: dict[str, list[dict[str, Any]]] = {chunk.hash: [] for chunk in batch}
        for (chunk, question), outcome in zip(asked, answers):
            self._count(outcome)
            if not outcome.ok:
                rejects[chunk.hash].append(self._unfinished(
                    outcome, "answer", chunk, "answers.max_tokens", recipe.answers.max_tokens,
                    question))
                continue
            reply = outcome.value
            found = check_answer(reply.answerable, reply.answer, chunk.text,
                                 recipe.filters.grounding)
            if found is not None:
                rejects[chunk.hash].append(self._reject(found, "answer", chunk, question,
                                                        reply.answer))
                continue
            args = {recipe.function.parameter: question}
            extra = {**chunk.provenance(), "teacher": self.teacher.name}
            records[chunk.hash].append(self.builder.build(
                self.spec.bind((), args), self.spec.dump_output({"answer": reply.answer.strip()}),
                duration_s=share, annotations={"extra": extra}))
        bars.answers(len(asked))
        for chunk in batch:
            for reject in rejects[chunk.hash]:
                report.rejects[reject.reason] += 1
            yield chunk, records[chunk.hash], rejects[chunk.hash]

    def _count(self, outcome: Any) -> None:
        self.report.prompt_tokens += outcome.prompt_tokens
        self.report.completion_tokens += outcome.completion_tokens

    def _reject(self, found: tuple[str, str], stage: str, chunk: Chunk, question: str | None,
                answer: str | None = None) -> Reject:
        return Reject(found[0], stage, found[1], chunk.provenance(), question, answer)

    def _unfinished(self, outcome: Any, stage: str, chunk: Chunk, key: str, budget: int,
                    question: str | None = None) -> Reject:
        detail = _UNFINISHED[outcome.status].format(key=key, budget=budget, error=outcome.error)
        return Reject(outcome.status, stage, detail, chunk.provenance(), question,
                      outcome.text or None)


# -- progress --------------------------------------------------------------------------------------


class _Progress:
    """Progress bars for questions (per chunk) and answers (per question), or nothing."""

    def __init__(self, enabled: bool, chunks: int, per_chunk: int):
        self.enabled, self.chunks, self.per_chunk = enabled and chunks > 0, chunks, per_chunk
        self._bars: list[Any] = []

    def __enter__(self) -> _Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self._questions = tqdm(total=self.chunks, desc="questions", unit="chunk")
            self._answers = tqdm(total=self.chunks * self.per_chunk, desc="answers",
                                 unit="question")
            self._bars = [self._questions, self._answers]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for bar in self._bars:
            bar.close()

    def questions(self, n: int, *, unasked: int) -> None:
        """``n`` chunks have their questions; ``unasked`` of them will not be answered."""
        if self._bars:
            self._questions.update(n)
            self._answers.total -= unasked
            self._answers.refresh()

    def answers(self, n: int) -> None:
        if self._bars:
            self._answers.update(n)


