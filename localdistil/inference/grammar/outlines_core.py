"""The outlines_core engine: the whole token automaton of the canonical expression, built up front.

``outlines_core`` builds every state of the automaton against the whole vocabulary when the
grammar is made, so its first-call cost grows with the schema (a float field or a string with a
``max_length`` add hundreds of states); once built, with the per-state token sets cached here,
it is the fastest engine per token. It needs nothing Outlines does not already install. It
allows any tokenization of forced text, so an untuned model may write ``{"`` as ``{`` + ``"``
where fast-forward appends ``{"`` (both valid; a model fine-tuned on canonical text writes the
token fast-forward appends).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localdistil.inference.grammar.cursor import Cursor, GrammarEngine

if TYPE_CHECKING:
    import numpy

    from localdistil.inference.tokens import TokenTable


class IndexEngine(GrammarEngine):
    """outlines_core's token automaton with per-state caches (states are plain ints)."""

    def __init__(self, regex: str, table: TokenTable) -> None:
        import outlines_core

        super().__init__(regex, table)
        try:
            self.index = outlines_core.Index(regex, self.vocabulary(table))
        except Exception as error:  # outlines_core raises ValueError on an unusable grammar
            raise ValueError(f"against the tokenizer's vocabulary: {error}") from error
        self.initial = self.index.get_initial_state()
        self.final = frozenset(self.index.get_final_states())
        self.eos = -1 if table.eos_id is None else table.eos_id
        self.sets: dict[int, tuple[numpy.ndarray, bool]] = {}
        self.forced: dict[int, bytes] = {}
        self.after: dict[tuple[int, bytes], frozenset[int]] = {}
        self.terminal: dict[int, bool] = {}

    @staticmethod
    def vocabulary(table: TokenTable) -> Any:
        return table.view("outlines_core", _vocabulary)

    def cursor(self) -> Cursor:
        return _IndexCursor(self)

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

    def next_bytes_after(self, state: int, forced: bytes) -> frozenset[int]:
        """The first bytes of the tokens allowed after walking ``forced`` from ``state``."""
        key = (state, forced)
        found = self.after.get(key)
        if found is None:
            current: int | None = state
            for byte in forced:
                token = self.table.single_byte[byte]
                current = None if token < 0 else self.index.get_next_state(current, token)
                if current is None:
                    break
            first = () if current is None else self.table.first_byte[self.allowed_ids(current)]
            found = self.after[key] = frozenset(int(b) for b in set(first) if b >= 0)
        return found


class _IndexCursor(Cursor):
    def __init__(self, engine: IndexEngine):
        self.table, self.engine, self.state = engine.table, engine, engine.initial

    def allowed(self) -> tuple[numpy.ndarray, bool]:
        return self.engine.token_set(self.state)

    def advance(self, token_id: int) -> bool:
        after = self.engine.index.get_next_state(self.state, token_id)
        if after is None:
            return False
        self.state = after
        return True

    def is_final(self) -> bool:
        return self.state in self.engine.final

    def is_terminal(self) -> bool:
        return self.engine.is_terminal(self.state)

    def _forced_bytes(self) -> bytes:
        return self.engine.forced_bytes(self.state)

    def _next_bytes_after(self, forced: bytes) -> frozenset[int]:
        return self.engine.next_bytes_after(self.state, forced)


def _vocabulary(table: TokenTable) -> Any:
    """The vocabulary as outlines_core takes it: a ``Vocabulary`` of bytes -> token ids."""
    import outlines_core

    by_bytes: dict[bytes, list[int]] = {}
    for token_id, raw in enumerate(table.token_bytes):
        if raw:
            by_bytes.setdefault(raw, []).append(token_id)
    # outlines_core wants an EOS id; one outside the vocabulary serves where there is none.
    eos = table.size if table.eos_id is None else table.eos_id
    return outlines_core.Vocabulary(eos, by_bytes)
