"""The default prompts of the document pipeline: every word the teacher reads, in one place.

A recipe may replace any of the four templates (``questions.system``, ``questions.user``,
``answers.system``, ``answers.user``); ``localdistil synth RECIPE --show-prompts`` prints them
rendered for the first chunk. A template names what it needs in braces, and only these names
are replaced, so any other brace (a JSON example, say) is left as written:

- ``{chunk}``: the chunk's text;
- ``{source}``: where it comes from (the file, and the line of a ``.jsonl`` file);
- ``{count}``: how many questions to write (``questions.per_chunk``);
- ``{question}``: the question to answer (answer templates only).

These are the prompts of the *teacher* that writes the training data. The student is trained on
the prompts of :mod:`localdistil.prompts` (``answer(question="...")``), like any traced function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: The names a template may use, and the templates that may use each.
PLACEHOLDERS: dict[str, str] = {
    "chunk": "the chunk's text",
    "source": "where the chunk comes from (file, and line for .jsonl)",
    "count": "how many questions to write (questions.per_chunk)",
    "question": "the question to answer (answers templates only)",
}

QUESTIONS_SYSTEM = (
    "You write exam questions about a passage of documentation. Each question must be "
    "answerable from the passage alone, must make sense without the passage (name the thing it "
    "asks about; never say 'the passage' or 'the text'), and must ask something different from "
    "the other questions."
)

QUESTIONS_USER = (
    "Passage from {source}:\n\n{chunk}\n\n"
    "Write {count} different questions that this passage answers."
)

ANSWERS_SYSTEM = (
    "You answer a question using only the passage given. Answer in one to three sentences, "
    "using the passage's own words where you can. If the passage does not contain the answer, "
    "set answerable to false and leave answer empty."
)

ANSWERS_USER = "Passage from {source}:\n\n{chunk}\n\nQuestion: {question}"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: str) -> set[str]:
    """The ``{name}`` placeholders a template uses (every identifier in braces)."""
    return set(_PLACEHOLDER.findall(template))


def render(template: str, values: Mapping[str, object]) -> str:
    """``template`` with each known ``{name}`` replaced by ``values[name]``, in one pass (a
    chunk that itself contains ``{question}`` is not rendered again); other braces stay."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return str(values[name]) if name in values else match.group(0)

    return _PLACEHOLDER.sub(replace, template)
