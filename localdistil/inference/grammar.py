"""The output grammar: a Pydantic JSON schema -> an automaton over a tokenizer's tokens that
admits the canonical compact JSON text of the return type and nothing else.

Canonical means the text Pydantic itself writes (``model.model_dump_json()``): keys in schema
order, every field present (defaults included), no whitespace anywhere, strings escaped the way
Pydantic escapes them, floats in Pydantic's shortest form (up to the limit described at
:func:`_number_regex`). Free whitespace is excluded on purpose: small models given the choice
loop on newlines until the token cap. The decode loop that walks the automaton is
:func:`localdistil.inference.generate.generate_json`.

A grammar is built once per (schema, tokenizer, backend) in a process
(:meth:`JsonGrammar.for_schema` caches it):

1. the schema is normalised so that every property is required (Pydantic always writes them);
2. ``outlines_core`` turns it into a regular expression with no whitespace, whose string, number,
   integer and date/time pieces are swapped for canonical ones (:data:`STRING_INNER`,
   :data:`NUMBER`, :data:`INTEGER`, :data:`FORMATS`): Outlines' own forms accept ``1.50``, ``-0``,
   ``\\/`` and any Unicode digit in a date, and refuse what Pydantic writes for some characters
   (``\\u0001``, raw DEL and U+0080-U+009F). Recursive types are refused (a regular expression
   cannot nest without bound; Outlines cuts them at depth 3 and then wrote ``,}``);
3. a backend compiles the expression against the tokenizer's vocabulary, given as the exact
   bytes of each token (special tokens left out; :class:`localdistil.inference.tokens.TokenTable`
   reads them); a :class:`Cursor` per sequence walks it.

Not expressed, so left to Pydantic's validation (a caller may retry or fall back): numeric
bounds (``Field(ge=0, le=1)``), string ``pattern`` together with a length limit, 29 February in
a year that has none, ``duration`` (timedelta) texts, which stay free strings.

Forced runs: where the grammar admits exactly one next byte, the bytes up to the next choice
are forced (``{"a":`` at the start, ``,"result":`` between fields); :meth:`Cursor.take_forced`
gives the tokenizer's own encoding of them, for the decode loop to append without sampling.

Backends, measured by ``bench/grammar_backends.py`` on SmolLM2-135M-Instruct (49,152 tokens), 2
shared CPU cores (load average 3-5 from other jobs, 1 torch thread), 2026-11. ``Person`` has 7
fields and one float; ``Heavy`` has four float fields and a ``max_length=200`` string. Figures
varied by up to 2x between runs; a model step costs 66-150 ms at batch 1.

==================================  ===============  =========================  ==============
backend                             per tokenizer    per schema                 per token
==================================  ===============  =========================  ==============
llguidance, direct (the default)    0.5-0.9 s        Multiply 2.5 ms, Person    0.08-0.13 ms
                                                     7 ms, Heavy 4-6 ms
outlines_core Index + cached sets   0.3-0.7 s        Multiply 27 ms, Person     0.005 ms (a new
(``backend="outlines_core"``)                        0.45-0.5 s, Heavy 5-6.6 s  state: ~1 ms)
``outlines.Generator``, its          --              0.3-0.8 s to construct;    0.29-0.35 ms
default backend (outlines_core)                      first call 8.7-13 s
                                                     (torch.compile), then
                                                     2.3-5.3 s per call
xgrammar, ``any_whitespace=False``  0.15-0.35 s      Multiply 1.3-7 ms, Person  0.29-0.34 ms
(measured, not offered)                              5-12 ms, Heavy 3.1-3.8 s;
                                                     our regex: Heavy 40 ms
==================================  ===============  =========================  ==============

Per-token cost separates nothing (under 0.2 % of a model step for every backend: constrained
decoding measured 0.95-0.98x the cost of unconstrained, within noise). First-call cost does:
outlines_core builds its whole automaton against the whole vocabulary up front, about 1 ms per
automaton state, and a float field adds ~300 states (its digit count is bounded), a string of
``max_length=n`` ~14n; llguidance builds lazily and stays in milliseconds whatever the schema.
Outlines' Generator adds a torch.compile of mask kernels and writes free whitespace
(``{ "a": 133, "b": 539, "result" : 13359 }``). xgrammar pulls in triton (~1 GB) on Linux.
So llguidance (7.6 MB wheel, no dependencies) is the default; outlines_core stays selectable,
needs nothing Outlines does not already install, and is the fastest per token once warm.

On SmolLM2, greedy decoding with fast-forward gave the very tokens of step-by-step decoding
with llguidance, which allows only the canonical tokenization of forced text. With
outlines_core, which allows any tokenization, untuned SmolLM2 wrote ``{"`` as ``{`` + ``"`` when
left to itself, so the two runs diverged (both valid); a model fine-tuned on canonical text
writes ``{"``, the token the fast-forward appends.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from typing import TYPE_CHECKING, Any

from localdistil.errors import DispatchError
from localdistil.inference.tokens import TokenTable, _import_llguidance

if TYPE_CHECKING:
    import numpy
    from transformers import PreTrainedTokenizerBase

# --- canonical JSON pieces ------------------------------------------------------------------

INTEGER = r"(0|-?[1-9][0-9]*)"
"""An integer as Pydantic writes it: no ``-0``, no leading zeros."""

STRING_INNER = r'([^"\\\x00-\x1F]|\\["\\bfnrt]|\\u00(0[0-7bef]|1[0-9a-f]))'
"""One character of a JSON string as Pydantic escapes it: ``\\"``, ``\\\\``, the five short
escapes for control characters, ``\\u00xx`` (lower-case) for the others, everything else raw
(``/``, DEL and non-ASCII included)."""


SIGNIFICANT_DIGITS = 17
"""The most significant digits a float may be written with: 17 is enough for every float, so
every text Pydantic writes is admitted (``0.30000000000000004``, ``2.3333333333333335``)."""


def _number_regex(digits: int = SIGNIFICANT_DIGITS) -> str:
    """A float as Pydantic writes it: its shortest round-tripping digits, no trailing zeros.

    Pydantic writes decimal notation with at least one fraction digit for 1e-5 <= |x| < 1e16
    (``0.00001``, ``1.5``, ``1000000000000000.0``) and ``1.5e+16`` / ``1.5e-7`` outside it. The
    pattern admits exactly those spellings with at most ``digits`` significant digits. Every text
    of at most 15 significant digits is then canonical (15 digits always survive a round trip);
    a 16- or 17-digit text is canonical when it is the shortest one for its value, which is
    what a model trained on Pydantic's output writes, and parses to a valid float either way.
    """
    digit, nonzero = "[0-9]", "[1-9]"
    decimals = []
    for width in range(1, 17):  # integer part of `width` digits (< 1e16), at most `digits` in all
        head = nonzero + (f"{digit}{{{width - 1}}}" if width > 1 else "")
        room = digits - width
        if room <= 0:
            tail = "0"
        elif room == 1:
            tail = f"(0|{nonzero})"
        else:
            tail = f"(0|{digit}{{0,{room - 1}}}{nonzero})"
        decimals.append(rf"{head}\.{tail}")
    below_one = rf"0\.(0|0{{0,4}}{nonzero}({digit}{{0,{digits - 2}}}{nonzero})?)"
    mantissa = rf"{nonzero}(\.{digit}{{0,{digits - 2}}}{nonzero})?"
    large = rf"{mantissa}e\+(1[6-9]|[2-9][0-9]|[12][0-9]{{2}}|30[0-7])"
    small = rf"{mantissa}e-([6-9]|[1-9][0-9]|[12][0-9]{{2}}|30[0-7])"
    return "-?(" + "|".join([*decimals, below_one, large, small]) + ")"


NUMBER = _number_regex()
"""A JSON number for a ``float`` field, as Pydantic writes it (see :func:`_number_regex`)."""

_YEAR = "([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"  # 0001-9999
_DAY = (rf"{_YEAR}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
        r"|02-(0[1-9]|1[0-9]|2[0-9]))")  # 29 February in any year: the one date left to Pydantic
_MICROSECONDS = (r"(\.([1-9][0-9]{5}|0[1-9][0-9]{4}|00[1-9][0-9]{3}|000[1-9][0-9]{2}|0000[1-9][0-9]"
                 r"|00000[1-9]))?")  # six digits, left out when zero
_CLOCK = rf"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]{_MICROSECONDS}"
_OFFSET = r"(Z|[+-](0[1-9]|1[0-9]|2[0-3]):[0-5][0-9]|[+-]00:(0[1-9]|[1-5][0-9]))?"  # UTC is Z
FORMATS = {"date-time": f'"{_DAY}T{_CLOCK}{_OFFSET}"', "date": f'"{_DAY}"',
           "time": f'"{_CLOCK}{_OFFSET}"'}
"""Dates and times as Pydantic writes them (``2026-03-03T09:30:00.250000+01:00``), in ASCII
digits: Outlines' own patterns admit any Unicode digit, six-digit years and ``\\.123``."""

_OUTLINES_FORMATS = ("date-time", "date", "time", "uuid", "email", "uri")  # others: a plain string

# Keywords whose value is a schema, a list of schemas, or a name -> schema mapping.
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def canonical_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` in which every object property is required.

    Pydantic writes every field, defaults included, so the canonical text never leaves one out;
    requiring them also removes a branch per optional field from the grammar.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA:
        if isinstance(out.get(key), dict):
            out[key] = canonical_schema(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [canonical_schema(item) for item in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: canonical_schema(sub) for name, sub in out[key].items()}
    if isinstance(out.get("properties"), dict):
        out["required"] = list(out["properties"])
    if out.get("format") is not None and out["format"] not in _OUTLINES_FORMATS:
        del out["format"]  # e.g. a timedelta's "duration": Pydantic checks the text
    return out


def canonical_regex(schema: dict[str, Any]) -> str:
    """The regular expression matching exactly the canonical compact JSON texts of ``schema``."""
    from outlines_core import json_schema as oc_schema

    cycle = _recursion(schema)
    if cycle:
        raise DispatchError(f"the return type {_title(schema)!r} is recursive "
                            f"({' -> '.join(cycle)}), which a regular grammar cannot express: "
                            "bound the nesting with separate models per level")
    text = json.dumps(canonical_schema(schema))
    try:
        regex = oc_schema.build_regex_from_schema(text, whitespace_pattern="")
    except Exception as error:  # outlines_core raises its own ValueError/TypeError kinds
        raise DispatchError(f"cannot build an output grammar from the JSON schema "
                            f"{_title(schema)!r}: {error}. Simplify the return type "
                            "(recursive or unusual types are the usual cause)") from error
    # NUMBER first: Outlines' number pattern contains its integer pattern.
    for outlines_piece, ours in ((oc_schema.NUMBER, NUMBER), (oc_schema.INTEGER, INTEGER),
                                 (oc_schema.DATE_TIME, FORMATS["date-time"]),
                                 (oc_schema.DATE, FORMATS["date"]),
                                 (oc_schema.TIME, FORMATS["time"]),
                                 (oc_schema.STRING_INNER, STRING_INNER)):
        regex = regex.replace(outlines_piece, ours)
    return regex


def _recursion(schema: dict[str, Any]) -> list[str]:
    """A cycle of ``$ref`` names reachable from the top of ``schema``, or ``[]``."""
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"].rsplit("/", 1)[-1]] if isinstance(node.get("$ref"), str) else []
            nested = [value for key, value in node.items() if key not in ("$defs", "definitions")]
            return found + [name for value in nested for name in refs(value)]
        if isinstance(node, list):
            return [name for item in node for name in refs(item)]
        return []

    def visit(name: str, path: list[str]) -> list[str]:
        if name in path:
            return [*path[path.index(name):], name]
        for child in refs(defs.get(name, {})):
            cycle = visit(child, [*path, name])
            if cycle:
                return cycle
        return []

    for name in refs(schema):
        cycle = visit(name, [])
        if cycle:
            return cycle
    return []


def schema_hash(schema: dict[str, Any]) -> str:
    """sha256 of the schema's compact JSON, key order kept (the order fixes the output text)."""
    return hashlib.sha256(json.dumps(schema, separators=(",", ":")).encode()).hexdigest()


def _title(schema: dict[str, Any]) -> str:
    """How messages name a schema: its title, else the model its top-level ``$ref`` names."""
    if not isinstance(schema, dict):
        return repr(schema)
    ref = schema.get("$ref")
    named = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else "<untitled>"
    return str(schema.get("title") or named)


# --- the grammar ----------------------------------------------------------------------------

BACKENDS = ("llguidance", "outlines_core")
"""Grammar engines. Both take the same canonical regular expression and give the same language;
they differ in cost (see the module docstring)."""

DEFAULT_BACKEND = "llguidance"

_TABLES: weakref.WeakKeyDictionary[Any, TokenTable] = weakref.WeakKeyDictionary()
# tokenizer -> {(schema hash, backend): grammar}
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
        if backend not in BACKENDS:
            raise ValueError(f"unknown grammar backend {backend!r}: choose one of "
                             f"{', '.join(BACKENDS)}")
        self.schema = schema
        self.schema_hash = schema_hash(schema)
        self.regex = canonical_regex(schema)
        self.table = table
        self.backend = backend
        view = table.view(backend)
        if backend == "outlines_core":
            self._engine: Any = _Automaton(self, view)
        else:
            llguidance = _import_llguidance()
            grammar = llguidance.LLMatcher.grammar_from_regex(self.regex)
            matcher = llguidance.LLMatcher(view, grammar, log_level=0)
            if matcher.is_error():
                raise DispatchError(f"cannot compile the output grammar of {_title(schema)!r}: "
                                    f"{matcher.get_error()}")
            self._engine = matcher

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
                    _GRAMMARS.setdefault(tokenizer, {})[key] = grammar
            finally:
                with _CACHE_LOCK:
                    _BUILD_LOCKS.pop((id(tokenizer), *key), None)
            return grammar

    def cursor(self) -> Cursor:
        """A fresh walker at the start of the text, for one sequence."""
        if self.backend == "outlines_core":
            return _IndexCursor(self.table, self._engine)
        return _GuidanceCursor(self.table, self._engine.deep_copy())

    def __repr__(self) -> str:
        return (f"JsonGrammar({_title(self.schema)!r}, backend={self.backend!r}, "
                f"schema_hash={self.schema_hash[:12]})")


class Cursor:
    """Where one sequence is in the grammar. Not thread-safe: one cursor per sequence."""

    table: TokenTable

    def allowed(self) -> tuple[numpy.ndarray, bool]:
        """The tokens allowed next as ``(ids, False)``, or, where that list would be the longer
        one (inside a string), the tokens *not* allowed as ``(ids, True)``; ids sorted.

        Where the JSON is complete but may go on, the EOS token is allowed (choosing it stops).
        """
        raise NotImplementedError

    def advance(self, token_id: int) -> bool:
        """Move past ``token_id``; False (and no move) where the grammar does not allow it."""
        raise NotImplementedError

    def is_final(self) -> bool:
        """Whether the text so far is a complete instance."""
        raise NotImplementedError

    def is_terminal(self) -> bool:
        """Whether the text is complete and nothing may follow (a closed top-level object)."""
        raise NotImplementedError

    def _forced_bytes(self) -> bytes:
        raise NotImplementedError

    def take_forced(self, limit: int) -> list[int]:
        """Advance over the tokens the grammar forces from here (at most ``limit``), return them.

        The forced text runs while the grammar admits exactly one next byte (``{"a":``,
        ``,"result":``); its tokens are the tokenizer's own encoding of that text, what a model
        fine-tuned on canonical outputs writes. Where the grammar also allows a token that runs
        on past the forced text (``["`` where the text ends in ``[``), the last token is left to
        the model, which learnt the text tokenized whole.
        """
        text = self._forced_bytes().decode("utf-8", errors="ignore")  # drops a split last character
        if not text or limit <= 0:
            return []
        tokens = self.table.encode(text)
        left = len(text.encode())
        taken: list[int] = []
        for position, token in enumerate(tokens[:limit]):
            if position == len(tokens) - 1:
                ids, inverted = self.allowed()
                lengths = self.table.lengths
                longer = (_complement(lengths, ids) if inverted else lengths[ids]) > left
                if bool(longer.any()):
                    break
            if not self.advance(token):
                break
            taken.append(token)
            left -= int(self.table.lengths[token])
        return taken


def _complement(values: numpy.ndarray, ids: numpy.ndarray) -> numpy.ndarray:
    import numpy as np

    keep = np.ones(len(values), dtype=bool)
    keep[ids] = False
    return values[keep]


class _Automaton:
    """outlines_core's token automaton with per-state caches (states are plain ints)."""

    def __init__(self, grammar: JsonGrammar, vocabulary: Any):
        import outlines_core

        try:
            self.index = outlines_core.Index(grammar.regex, vocabulary)
        except Exception as error:  # outlines_core raises ValueError on an unusable grammar
            raise DispatchError(f"cannot compile the output grammar of {_title(grammar.schema)!r} "
                                f"against the tokenizer's vocabulary: {error}") from error
        self.table = grammar.table
        self.initial = self.index.get_initial_state()
        self.final = frozenset(self.index.get_final_states())
        self.eos = -1 if self.table.eos_id is None else self.table.eos_id
        self.sets: dict[int, tuple[numpy.ndarray, bool]] = {}
        self.forced: dict[int, bytes] = {}
        self.terminal: dict[int, bool] = {}

    def allowed_ids(self, state: int) -> numpy.ndarray:
        import numpy as np

        allowed = self.index.get_allowed_tokens(state) or []
        ids = np.fromiter(allowed, dtype=np.intp, count=len(allowed))
        ids.sort()
        return ids[ids < self.table.size]

    def token_set(self, state: int) -> tuple[numpy.ndarray, bool]:
        found = self.sets.get(state)
        if found is None:
            import numpy as np

            allowed = self.allowed_ids(state)
            if 2 * len(allowed) > self.table.size:
                keep = np.ones(self.table.size, dtype=bool)
                keep[allowed] = False
                found = (np.flatnonzero(keep), True)
            else:
                found = (allowed, False)
            self.sets[state] = found
        return found

    def is_terminal(self, state: int) -> bool:
        found = self.terminal.get(state)
        if found is None:
            found = state in self.final and bool((self.allowed_ids(state) == self.eos).all())
            self.terminal[state] = found
        return found

    def forced_bytes(self, state: int) -> bytes:
        """The bytes forced from ``state``, walked one single-byte token at a time."""
        found = self.forced.get(state)
        if found is None:
            import numpy as np

            forced = bytearray()
            current: int | None = state
            while current is not None and current not in self.final:
                first = np.unique(self.table.first_byte[self.allowed_ids(current)])
                if len(first) != 1 or first[0] < 0 or self.table.single_byte[int(first[0])] < 0:
                    break
                current = self.index.get_next_state(current, self.table.single_byte[int(first[0])])
                forced.append(int(first[0]))
            found = self.forced[state] = bytes(forced) if current is not None else b""
        return found


class _IndexCursor(Cursor):
    def __init__(self, table: TokenTable, automaton: _Automaton):
        self.table, self.automaton, self.state = table, automaton, automaton.initial

    def allowed(self) -> tuple[numpy.ndarray, bool]:
        return self.automaton.token_set(self.state)

    def advance(self, token_id: int) -> bool:
        after = self.automaton.index.get_next_state(self.state, token_id)
        if after is None:
            return False
        self.state = after
        return True

    def is_final(self) -> bool:
        return self.state in self.automaton.final

    def is_terminal(self) -> bool:
        return self.automaton.is_terminal(self.state)

    def _forced_bytes(self) -> bytes:
        return self.automaton.forced_bytes(self.state)


class _GuidanceCursor(Cursor):
    def __init__(self, table: TokenTable, matcher: Any):
        self.table, self.matcher = table, matcher
        self._allowed: tuple[numpy.ndarray, bool] | None = None

    def allowed(self) -> tuple[numpy.ndarray, bool]:
        if self._allowed is None:
            import numpy as np

            bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8),
                                 bitorder="little")[: self.table.size].astype(bool)
            count = int(bits.sum())
            if 2 * count > self.table.size:
                self._allowed = (np.flatnonzero(~bits), True)
            else:
                self._allowed = (np.flatnonzero(bits), False)
        return self._allowed

    def advance(self, token_id: int) -> bool:
        if self.matcher.try_consume_tokens([token_id]) != 1:
            return False
        self._allowed = None
        return True

    def is_final(self) -> bool:
        return self.matcher.is_accepting()

    def is_terminal(self) -> bool:
        if self.matcher.is_stopped():
            return True
        if not self.matcher.is_accepting():
            return False
        ids, inverted = self.allowed()
        return not inverted and all(int(i) == self.table.eos_id for i in ids)

    def _forced_bytes(self) -> bytes:
        return self.matcher.compute_ff_bytes()
