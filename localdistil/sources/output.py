"""The output directory of a synth run: whole lines appended, what a killed run left repaired,
and what earlier runs did read back.

- ``records.jsonl``: the records; ``rejects.jsonl``: every item left out, with its reason;
- ``done.jsonl``: one line per chunk whose records and rejects are all written;
- ``synth.json``: the recipe as run, and the generation settings a rerun must share.

Each chunk's lines are appended (``O_APPEND``, one ``write`` per file) before its line in
``done.jsonl``. A run killed in between leaves the lines of a chunk that is not done, or a torn
last line; :func:`prepare_output` drops exactly those (rewriting the file by an atomic rename),
so the chunk is generated again, once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localdistil.errors import RecipeError
from localdistil.files import replace_file
from localdistil.sources.chunk import Chunk
from localdistil.sources.filters import QuestionFilter, Reject
from localdistil.sources.recipe import SynthRecipe

RECORDS, REJECTS, DONE, SETTINGS = "records.jsonl", "rejects.jsonl", "done.jsonl", "synth.json"


@dataclasses.dataclass
class OutputState:
    """What earlier runs left in an output directory.

    Attributes:
        done: the hashes of the chunks whose records and rejects are all written.
        questions: the filter that knows every question asked about those chunks.
        records: the records in ``records.jsonl``.
    """

    done: set[str]
    questions: QuestionFilter
    records: int


def prepare_output(out: Path, recipe: SynthRecipe, *, overwrite: bool) -> OutputState:
    """Check (or write) ``synth.json``, repair the files a killed run left, and read back what
    is done: the chunks, and the questions already asked (for the duplicate filter)."""
    settings_path = out / SETTINGS
    settings = recipe.generation_settings()
    if overwrite:
        for name in (RECORDS, REJECTS, DONE, SETTINGS):
            (out / name).unlink(missing_ok=True)
    if settings_path.exists():
        earlier = json.loads(settings_path.read_text(encoding="utf-8")).get("settings", {})
        if earlier != settings:
            changed = sorted(f"{section}.{key}" for section in set(settings) | set(earlier)
                             for key in set(settings.get(section, {})) |
                             set(earlier.get(section, {}))
                             if settings.get(section, {}).get(key) !=
                             earlier.get(section, {}).get(key))
            raise RecipeError(
                f"output.dir: {out} holds a run with other settings ({', '.join(changed)} "
                "changed), so its records would mix two recipes. Choose another output.dir, "
                "or start over with --overwrite", key="output.dir")
    else:
        out.mkdir(parents=True, exist_ok=True)
        replace_file(settings_path, json.dumps(
            {"version": 1, "settings": settings, "recipe": recipe.as_dict()}, indent=2,
            ensure_ascii=False) + "\n")
    done_lines = whole_lines(out / DONE, keep=lambda obj: "chunk_hash" in obj)
    done = {obj["chunk_hash"] for obj in done_lines}
    questions = QuestionFilter(recipe.filters.near_duplicate)
    parameter = recipe.function.parameter
    records = whole_lines(out / RECORDS, keep=lambda obj: _chunk_of(obj) in done)
    for obj in records:
        questions.accept(obj["localdistil"]["args"][parameter])
    for obj in whole_lines(out / REJECTS, keep=lambda obj: obj.get("chunk", {}).get(
            "chunk_hash") in done):
        if obj.get("stage") == "answer" and obj.get("question"):
            questions.accept(obj["question"])  # it passed the question filter then
    return OutputState(done, questions, len(records))


def _chunk_of(record: dict[str, Any]) -> str | None:
    return (record.get("localdistil", {}).get("extra") or {}).get("chunk_hash")


def whole_lines(path: Path, *, keep: Any) -> list[dict[str, Any]]:
    """The JSON objects of ``path``'s whole lines that ``keep`` accepts; when any line is torn
    or not kept, the file is rewritten with only the kept ones (atomically)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    kept, raw_kept, dropped = [], [], False
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()  # no newline after it: a torn write
        dropped = True
    for raw in lines:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and keep(obj):
            kept.append(obj)
            raw_kept.append(raw)
        else:
            dropped = True
    if dropped:
        replace_file(path, b"".join(line + b"\n" for line in raw_kept))
    return kept


def append_lines(path: Path, objects: Sequence[dict[str, Any]]) -> None:
    """Append one line per object in one ``write`` to a file opened with ``O_APPEND``."""
    if not objects:
        return
    data = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_chunk(out: Path, chunk: Chunk, records: Sequence[dict[str, Any]],
                rejects: Sequence[Reject]) -> None:
    """Append a chunk's records and rejects, then its line in ``done.jsonl``: the order that
    lets :func:`prepare_output` tell a finished chunk from one a kill interrupted."""
    append_lines(out / RECORDS, records)
    append_lines(out / REJECTS, [reject.to_json() for reject in rejects])
    append_lines(out / DONE, [{"chunk_hash": chunk.hash, "source": chunk.source,
                               "records": len(records), "rejects": len(rejects)}])

