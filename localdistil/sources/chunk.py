"""Documents cut into chunks that keep their provenance.

A document is split at the coarsest boundary that gives pieces small enough: paragraphs (a
blank line), then sentences (``.``, ``!`` or ``?`` and a space), then lines, then words, and a
piece longer than a chunk with no boundary at all (one huge token-less line) is cut at the
size itself. Consecutive pieces are then packed into chunks of at most ``size``; the next chunk
starts with as many whole pieces from the end of the one before as fit in ``overlap`` (so the
overlap is at most ``overlap``, and may be none where the last piece alone is longer).

Sizes count characters, or tokens of the student's tokenizer. In tokens, a chunk's size is the
sum of its pieces' token counts, which is never less than the count of the chunk's text for the
byte-level BPE tokenizers of the models localdistil trains (a word split from its space costs
one token more, not less).

Every :class:`Chunk` records where it came from: ``document.text[start:end] == chunk.text``,
where the document is what :func:`localdistil.sources.load.load_file` gives for ``path`` (and
``line``); ``hash`` is the SHA-256 of the text, by which a rerun knows what it has done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

from localdistil.sources.load import Document

#: The boundaries tried in turn, coarsest first; each match ends the piece before it.
SEPARATORS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\n[ \t]*\n\s*"),  # a blank line: paragraphs
    re.compile(r"(?<=[.!?])[\"')\]]*\s+"),  # sentences
    re.compile(r"\n\s*"),  # lines (lists, tables)
    re.compile(r"\s+"),  # words
)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A passage of a document, with its provenance.

    Attributes:
        text: the passage (no leading or trailing whitespace).
        path: the document's file.
        line: the line of a ``.jsonl`` file the document is, else ``None``.
        start: the offset of ``text`` in the document's text (characters).
        end: where it ends: ``document.text[start:end] == text``.
        index: the chunk's number in its document, from 0.
        hash: SHA-256 of ``text``: the chunk's identity when a run resumes.
    """

    text: str
    path: str
    start: int
    end: int
    line: int | None = None
    index: int = 0
    hash: str = ""

    @property
    def source(self) -> str:
        """``path``, or ``path:line`` for a line of a ``.jsonl`` file."""
        return self.path if self.line is None else f"{self.path}:{self.line}"

    def provenance(self) -> dict[str, Any]:
        """Where the chunk came from, as written into every record's ``extra``."""
        found: dict[str, Any] = {"path": self.path}
        if self.line is not None:
            found["line"] = self.line
        found.update(start=self.start, end=self.end, index=self.index, chunk_hash=self.hash)
        return found


class Measure(Protocol):
    """How long a text is, in the unit of ``chunk.size``."""

    def length(self, text: str) -> int:
        """The size of ``text``."""

    def cuts(self, text: str, size: int) -> list[int]:
        """Offsets that cut ``text`` (no boundary in it) into parts of at most ``size``."""


class Characters:
    """Sizes in characters."""

    def length(self, text: str) -> int:
        return len(text)

    def cuts(self, text: str, size: int) -> list[int]:
        return list(range(size, len(text), size))


class Tokens:
    """Sizes in tokens of a Hugging Face tokenizer (special tokens not counted)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def cuts(self, text: str, size: int) -> list[int]:
        if getattr(self.tokenizer, "is_fast", False):
            offsets = self.tokenizer(text, add_special_tokens=False, verbose=False,
                                     return_offsets_mapping=True)["offset_mapping"]
            found = [offsets[i][0] for i in range(size, len(offsets), size)]
            return [cut for cut in found if 0 < cut < len(text)]
        cuts, start = [], 0  # a slow tokenizer: characters, halved until they fit
        while len(text) - start > 0 and self.length(text[start:]) > size:
            step = size
            while step > 1 and self.length(text[start:start + step]) > size:
                step //= 2
            start += step
            cuts.append(start)
        return cuts


def measure_for(unit: str, tokenizer: str | None = None) -> Measure:
    """The :class:`Measure` of a recipe's ``chunk.unit`` (``tokenizer``: a model reference
    whose tokenizer counts tokens).

    Raises:
        ModelError: the tokenizer's model cannot be resolved.
    """
    if unit == "characters":
        return Characters()
    from localdistil.models.resolve import load_tokenizer, resolve_model

    if tokenizer is None:
        raise ValueError("unit 'tokens' needs a tokenizer (chunk.tokenizer)")
    return Tokens(load_tokenizer(resolve_model(tokenizer)))


def chunk_spans(text: str, measure: Measure, size: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each chunk of ``text``, stripped of surrounding whitespace.

    Raises:
        ValueError: ``overlap`` is not smaller than ``size``, or ``size`` is not positive.
    """
    if size <= 0:
        raise ValueError(f"chunk.size must be positive, not {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"chunk.overlap ({overlap}) must be at least 0 and smaller than "
                         f"chunk.size ({size})")
    pieces = _pieces(text, measure, size)
    spans: list[tuple[int, int]] = []
    first = 0
    while first < len(pieces):
        last, total = first, 0
        while last < len(pieces) and total + pieces[last].size <= size:
            total += pieces[last].size
            last += 1
        last = max(last, first + 1)  # every piece fits alone; this only guards the loop
        if last < len(pieces):  # end at a paragraph if that keeps at least half the chunk
            kept = total
            for end in range(last, first + 1, -1):
                if pieces[end - 1].ends_paragraph and kept >= size // 2:
                    last = end
                    break
                kept -= pieces[end - 1].size
        span = _strip(text, pieces[first].start, pieces[last - 1].end)
        if span is not None:
            spans.append(span)
        if last == len(pieces):
            break
        start, repeated = last, 0
        while start - 1 > first and repeated + pieces[start - 1].size <= overlap:
            repeated += pieces[start - 1].size
            start -= 1
        first = start
    return spans


def chunk_documents(documents: Iterable[Document], measure: Measure, *, size: int,
                    overlap: int) -> list[Chunk]:
    """The chunks of every document, in order (see :func:`chunk_spans`)."""
    chunks = []
    for document in documents:
        for index, (start, end) in enumerate(chunk_spans(document.text, measure, size, overlap)):
            text = document.text[start:end]
            chunks.append(Chunk(text=text, path=document.path, line=document.line, start=start,
                                end=end, index=index, hash=content_hash(text)))
    return chunks


def content_hash(text: str) -> str:
    """SHA-256 of ``text`` as UTF-8, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Piece(NamedTuple):
    start: int
    end: int
    size: int
    ends_paragraph: bool = False


def _pieces(text: str, measure: Measure, size: int) -> list[_Piece]:
    """Contiguous pieces covering ``text``: its sentences (cut further where one is longer
    than ``size``), the last of each paragraph marked."""
    pieces: list[_Piece] = []
    for a, b in _spans(text, 0, len(text), SEPARATORS[0]):
        sentences = [piece for x, y in _spans(text, a, b, SEPARATORS[1])
                     for piece in _split(text, x, y, measure, size, 2)]
        if sentences:
            sentences[-1] = sentences[-1]._replace(ends_paragraph=True)
        pieces += sentences
    return pieces


def _spans(text: str, start: int, end: int, separator: re.Pattern[str]) -> list[tuple[int, int]]:
    """``text[start:end]`` cut after each match of ``separator`` (the match kept before the
    cut), as contiguous ``(start, end)`` spans."""
    spans, piece_start = [], start
    for match in separator.finditer(text, start, end):
        if match.end() >= end:
            break
        if match.end() > piece_start:
            spans.append((piece_start, match.end()))
            piece_start = match.end()
    if end > piece_start:
        spans.append((piece_start, end))
    return spans


def _split(text: str, start: int, end: int, measure: Measure, size: int,
           level: int) -> list[_Piece]:
    """Contiguous pieces covering ``text[start:end]``, each at most ``size``, cut at the
    coarsest boundary (from ``SEPARATORS[level]`` on) that allows it, else at the size."""
    length = measure.length(text[start:end])
    if length <= size:
        return [_Piece(start, end, length)] if end > start else []
    if level == len(SEPARATORS):
        bounds = [start, *(start + cut for cut in measure.cuts(text[start:end], size)), end]
        return [_Piece(a, b, measure.length(text[a:b])) for a, b in zip(bounds, bounds[1:])
                if b > a]
    return [piece for a, b in _spans(text, start, end, SEPARATORS[level])
            for piece in _split(text, a, b, measure, size, level + 1)]


def _strip(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None
