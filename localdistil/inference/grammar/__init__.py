"""The output grammar: a Pydantic JSON schema -> an automaton over a tokenizer's tokens that
admits the canonical compact JSON text of the return type and nothing else.

- :mod:`~localdistil.inference.grammar.regex`: the canonical text as one regular expression
  (what canonical means, and what is left to Pydantic's validation);
- :mod:`~localdistil.inference.grammar.cursor`: the interface every engine implements, and
  :meth:`Cursor.take_forced`, written once on it;
- :mod:`~localdistil.inference.grammar.llguidance` and
  :mod:`~localdistil.inference.grammar.outlines_core`: the engines, one module each;
- :mod:`~localdistil.inference.grammar.core`: :class:`JsonGrammar` (built once per schema,
  tokenizer and engine) and :data:`ENGINES`, the one place an engine is chosen.

Forced runs: where the grammar admits exactly one next byte, the bytes up to the next choice
are forced (``{"a":`` at the start, ``,"result":`` between fields); :meth:`Cursor.take_forced`
gives the tokenizer's own encoding of them, for the decode loop
(:func:`localdistil.inference.generate.generate_json`) to append without sampling.

Why these engines: the per-token cost of any of them is a negligible part of a model step, so
they are told apart by the cost of a new schema and by what they pull in. llguidance (a small
wheel with no dependencies) builds lazily and is the default; outlines_core comes with Outlines
and is the fastest per token once warm. Outlines' own ``Generator`` was left out because it
torch-compiles mask kernels on its first call and writes free whitespace; xgrammar because it
pulls in triton. The measurements are in the README's *Benchmarks* section
(``bench/grammar_backends.py``).
"""

from localdistil.inference.grammar.core import BACKENDS, DEFAULT_BACKEND, ENGINES, JsonGrammar
from localdistil.inference.grammar.cursor import Cursor, GrammarEngine
from localdistil.inference.grammar.regex import (
    FORMATS,
    INTEGER,
    NUMBER,
    SIGNIFICANT_DIGITS,
    STRING_INNER,
    canonical_regex,
    canonical_schema,
    schema_title,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "ENGINES",
    "FORMATS",
    "INTEGER",
    "NUMBER",
    "SIGNIFICANT_DIGITS",
    "STRING_INNER",
    "Cursor",
    "GrammarEngine",
    "JsonGrammar",
    "canonical_regex",
    "canonical_schema",
    "schema_title",
]
