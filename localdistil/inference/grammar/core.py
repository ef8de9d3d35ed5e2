"""The output grammar of one schema over one tokenizer, and the registry of grammar engines.

A grammar is built once per (schema, tokenizer, backend) in a process
(:meth:`JsonGrammar.for_schema` caches it): the schema's canonical regular expression
(:func:`~localdistil.inference.grammar.regex.canonical_regex`) is compiled by the chosen engine
against the tokenizer's vocabulary, given as the exact bytes of each token (special tokens left
out; :class:`~localdistil.inference.tokens.TokenTable` reads them); a
:class:`~localdistil.inference.grammar.cursor.Cursor` per sequence walks it.

Engines are chosen here and only here, in :data:`ENGINES`: adding one is a module with a
:class:`~localdistil.inference.grammar.cursor.GrammarEngine` subclass and a line in that dict.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from localdistil.errors import DispatchError
from localdistil.inference.grammar.llguidance import GuidanceEngine
from localdistil.inference.grammar.outlines_core import IndexEngine
from localdistil.inference.grammar.regex import canonical_regex, schema_title
from localdistil.inference.tokens import TokenTable
from localdistil.spec import schema_hash

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from localdistil.inference.grammar.cursor import Cursor, GrammarEngine

ENGINES: dict[str, type[GrammarEngine]] = {
    "llguidance": GuidanceEngine,
    "outlines_core": IndexEngine,
}
"""Grammar engines by name. All take the same canonical regular expression and give the same
language; they differ in cost (see each engine's module)."""

BACKENDS = tuple(ENGINES)
"""The names a ``backend=`` argument accepts."""

DEFAULT_BACKEND = "llguidance"
"""Builds a schema's grammar lazily, in milliseconds whatever the schema, where outlines_core
builds the whole automaton up front (seconds for a schema with floats or long strings)."""

MAX_GRAMMARS = 256
"""Grammars kept per tokenizer; the oldest built is let go first. A server answering schemas
its clients send would otherwise grow without bound."""

_TABLES: weakref.WeakKeyDictionary[Any, TokenTable] = weakref.WeakKeyDictionary()
# tokenizer -> {(schema hash, backend): grammar}, oldest first
_GRAMMARS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], JsonGrammar]] = (
    weakref.WeakKeyDictionary())
_CACHE_LOCK = threading.Lock()
_BUILD_LOCKS: dict[tuple[int, str, str], threading.Lock] = {}


class JsonGrammar:
    """The canonical JSON of one schema over one tokenizer's tokens; :meth:`cursor` walks it.

    Immutable apart from internal caches that any number of threads may fill at once; each
    sequence being generated has its own cursor.
    """

    def __init__(self, schema: dict[str, Any], table: TokenTable, backend: str = DEFAULT_BACKEND):
        engine = ENGINES.get(backend)
        if engine is None:
            raise ValueError(f"unknown grammar backend {backend!r}: choose one of "
                             f"{', '.join(BACKENDS)}")
        self.schema = schema
        self.schema_hash = schema_hash(schema)
        self.regex = canonical_regex(schema)
        self.table = table
        self.backend = backend
        try:
            self._engine = engine(self.regex, table)
        except ValueError as error:
            raise DispatchError(f"cannot compile the output grammar of {schema_title(schema)!r} "
                                f"with {backend}: {error}") from error

    @classmethod
    def for_schema(cls, schema: dict[str, Any], tokenizer: PreTrainedTokenizerBase, *,
                   backend: str = DEFAULT_BACKEND) -> JsonGrammar:
        """The grammar of ``schema`` for ``tokenizer``, built once per process and then shared.

        Cached per (schema hash, backend, tokenizer object); thread-safe, and two threads asking
        for the same new grammar build it once. Raises :class:`DispatchError` if the schema cannot
        be turned into a grammar.
        """
        if not isinstance(schema, dict):
            raise TypeError(f"schema must be a JSON schema dict, not {type(schema).__name__}")
        key = (schema_hash(schema), backend)
        with _CACHE_LOCK:
            found = _GRAMMARS.get(tokenizer, {}).get(key)
            if found is not None:
                return found
            build_lock = _BUILD_LOCKS.setdefault((id(tokenizer), *key), threading.Lock())
        with build_lock:
            with _CACHE_LOCK:
                found = _GRAMMARS.get(tokenizer, {}).get(key)
                table = _TABLES.get(tokenizer)
            if found is not None:
                return found
            try:
                if table is None:
                    table = TokenTable(tokenizer)
                grammar = cls(schema, table, backend)
                with _CACHE_LOCK:
                    _TABLES.setdefault(tokenizer, table)
                    kept = _GRAMMARS.setdefault(tokenizer, {})
                    kept[key] = grammar
                    while len(kept) > MAX_GRAMMARS:
                        del kept[next(iter(kept))]
            finally:
                with _CACHE_LOCK:
                    _BUILD_LOCKS.pop((id(tokenizer), *key), None)
            return grammar

    def cursor(self) -> Cursor:
        """A fresh walker at the start of the text, for one sequence."""
        return self._engine.cursor()

    def __repr__(self) -> str:
        return (f"JsonGrammar({schema_title(self.schema)!r}, backend={self.backend!r}, "
                f"schema_hash={self.schema_hash[:12]})")
