"""What keeps a generated question or answer out of the records, and why.

Every rejected item becomes a :class:`Reject` (written to ``rejects.jsonl`` and counted in the
report), with one of the :data:`REASONS`:

- ``budget``: the teacher ran out of tokens before its JSON was complete;
- ``invalid``: the teacher's JSON failed the type's validation (or, for a server, the request
  failed or the reply was not JSON of the schema);
- ``empty``: an empty question or an empty answer marked answerable;
- ``duplicate``: a question equal to an earlier one once normalised (case, punctuation, spaces);
- ``near_duplicate``: a question whose word set overlaps an earlier one's by at least
  ``filters.near_duplicate`` (Jaccard: shared words / all words);
- ``not_answerable``: the teacher said the chunk does not answer the question;
- ``not_grounded``: fewer than ``filters.grounding`` of the answer's content words (words that
  are not stop words) appear in the chunk.

Both checks are plain word overlaps: cheap, explainable, and meant to catch a teacher that
drifts from its text, not to judge an answer's truth.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

Reason = Literal["budget", "invalid", "empty", "duplicate", "near_duplicate", "not_answerable",
                 "not_grounded"]

#: Every reason an item is rejected for, in the order the report lists them.
REASONS: tuple[str, ...] = ("budget", "invalid", "empty", "duplicate", "near_duplicate",
                            "not_answerable", "not_grounded")

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")

#: Words that carry no content: left out of the grounding check.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each either else etc few
for from further had has have having he her here hers herself him himself his how i if in into
is it its itself just let me more most my myself no nor not now of off on once one only or other
our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up upon us use used uses
using very via was we were what when where which while who whom why will with would yes you your
yours yourself yourselves
""".split())


@dataclasses.dataclass(frozen=True)
class Reject:
    """One item left out of the records.

    Attributes:
        reason: one of :data:`REASONS`.
        stage: ``"questions"`` (a chunk's questions, or one of them) or ``"answer"``.
        detail: what was found (the score and threshold, the earlier question, the error).
        chunk: the chunk's provenance (``Chunk.provenance()``).
        question: the question, where there is one.
        answer: the answer (or the teacher's raw text when it was not valid).
    """

    reason: str
    stage: str
    detail: str
    chunk: dict[str, Any]
    question: str | None = None
    answer: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The line written to ``rejects.jsonl``."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased (letters and digits; ``don't`` is one word)."""
    return [word.replace("’", "'") for word in _WORD.findall(text.lower())]


def normalise(text: str) -> str:
    """``text`` as compared for exact duplicates: lower-case words joined by single spaces."""
    return " ".join(words(text))


def jaccard(a: set[str], b: set[str]) -> float:
    """Shared items over all items; 1.0 for two empty sets."""
    return len(a & b) / len(a | b) if a or b else 1.0


def _stem(word: str) -> str:
    """A crude plural fold, so that ``adapters`` in an answer is found as ``adapter``."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def content_words(text: str) -> set[str]:
    """The words of ``text`` that are not :data:`STOP_WORDS`, plurals folded."""
    return {_stem(word) for word in words(text) if word not in STOP_WORDS}


def grounding(answer: str, chunk: str) -> float:
    """The share of the answer's content words that appear in ``chunk`` (1.0 when the answer
    has none: nothing in it is unsupported)."""
    wanted = content_words(answer)
    return len(wanted & content_words(chunk)) / len(wanted) if wanted else 1.0


class QuestionFilter:
    """Remembers the questions accepted so far (this run and the records of earlier runs) and
    refuses repeats of them.

    Each check compares with every accepted question: linear in their number, which is fine
    for tens of thousands.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._exact: dict[str, str] = {}
        self._sets: list[tuple[frozenset[str], str]] = []

    def __len__(self) -> int:
        return len(self._exact)

    def check(self, question: str) -> tuple[str, str] | None:
        """``(reason, detail)`` when ``question`` must be rejected, else ``None``. Does not
        remember it: call :meth:`accept` once it makes a record."""
        key = normalise(question)
        if not key:
            return "empty", "the question has no words"
        if key in self._exact:
            return "duplicate", f"same as {self._exact[key]!r}"
        mine = frozenset(key.split())
        for theirs, text in self._sets:
            score = jaccard(mine, theirs)
            if score >= self.threshold:
                return ("near_duplicate",
                        f"word overlap {score:.2f} >= {self.threshold} with {text!r}")
        return None

    def accept(self, question: str) -> None:
        """Remember ``question`` as accepted."""
        key = normalise(question)
        if key and key not in self._exact:
            self._exact[key] = question
            self._sets.append((frozenset(key.split()), question))


def check_answer(answerable: bool, answer: str, chunk: str,
                 threshold: float) -> tuple[str, str] | None:
    """``(reason, detail)`` when an answer must be rejected, else ``None``."""
    if not answerable:
        return "not_answerable", "the teacher found no answer in the chunk"
    if not answer.strip():
        return "empty", "answerable, but the answer is empty"
    if threshold > 0:
        score = grounding(answer, chunk)
        if score < threshold:
            missing = sorted(content_words(answer) - content_words(chunk))[:8]
            return ("not_grounded", f"{score:.2f} of its content words are in the chunk "
                                    f"(< {threshold}); not found: {', '.join(missing)}")
    return None
