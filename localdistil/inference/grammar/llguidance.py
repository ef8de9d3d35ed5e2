"""The llguidance engine (the default): a lazily built matcher over the canonical expression.

llguidance builds the parts of a grammar it visits as it goes, so a new schema costs
milliseconds whatever its size (a float field or a long string included), and it allows only
the canonical tokenization of forced text, so fast-forward gives the very tokens of step-by-step
greedy decoding. Per token it costs more than a warm ``outlines_core`` automaton, which does
not matter beside a model step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localdistil.errors import DispatchError
from localdistil.inference.grammar.cursor import Cursor, GrammarEngine

if TYPE_CHECKING:
    import numpy

    from localdistil.inference.tokens import TokenTable


class GuidanceEngine(GrammarEngine):
    """An ``llguidance.LLMatcher`` at the start of the text; each cursor walks a deep copy."""

    def __init__(self, regex: str, table: TokenTable) -> None:
        super().__init__(regex, table)
        llguidance = _import_llguidance()
        grammar = llguidance.LLMatcher.grammar_from_regex(regex)
        self.matcher = llguidance.LLMatcher(self.vocabulary(table), grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())

    @staticmethod
    def vocabulary(table: TokenTable) -> Any:
        return table.view("llguidance", _vocabulary)

    def cursor(self) -> Cursor:
        return _GuidanceCursor(self.table, self.matcher.deep_copy())


class _GuidanceCursor(Cursor):
    def __init__(self, table: TokenTable, matcher: Any):
        self.table, self.matcher = table, matcher
        self._allowed: tuple[numpy.ndarray, bool] | None = None
        self._forced: bytes | None = None  # the state's; allowed() and take_forced() ask

    def allowed(self) -> tuple[numpy.ndarray, bool]:
        if self._allowed is None:
            import numpy as np

            bits = self._allowed_bits()
            self._allow_other_tokenizations_of_forced_bytes(bits)
            count = int(bits.sum())
            if 2 * count > self.table.size:
                self._allowed = (np.flatnonzero(~bits), True)
            else:
                self._allowed = (np.flatnonzero(bits), False)
        return self._allowed

    def _allow_other_tokenizations_of_forced_bytes(self, bits: numpy.ndarray) -> None:
        """Where the grammar forces bytes, llguidance's mask holds only the first token of its
        own tokenization of them alone (``"`` for a forced ``"}}``), not the tokens a model
        writes there, which depend on what follows (SmolLM2: ``"}`` then ``},`` before another
        list item). Add every token that the grammar accepts and whose bytes run along the
        forced ones (a prefix of them, or them and more), checked one by one."""
        import numpy as np

        forced = self._forced_bytes()
        if not forced:
            return
        for token in np.flatnonzero((self.table.first_byte == forced[0]) & ~bits):
            raw = self.table.token_bytes[token]
            if not (forced.startswith(raw) or raw.startswith(forced)):
                continue
            if self.matcher.try_consume_tokens([int(token)]) == 1:
                self.matcher.rollback(1)
                bits[token] = True

    def _allowed_bits(self) -> numpy.ndarray:
        """One boolean per token: allowed next from the matcher's current state."""
        import numpy as np

        return np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8),
                             bitorder="little")[: self.table.size].astype(bool)

    def advance(self, token_id: int) -> bool:
        if self.matcher.try_consume_tokens([token_id]) != 1:
            return False
        self._allowed = self._forced = None
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
        if self._forced is None:
            self._forced = self.matcher.compute_ff_bytes()
        return self._forced

    def _next_bytes_after(self, forced: bytes) -> frozenset[int]:
        import numpy as np

        tokens = [self.table.single_byte[byte] for byte in forced]
        if min(tokens, default=0) < 0:
            return frozenset(range(256))  # a byte without its own token: assume anything
        consumed = self.matcher.try_consume_tokens(tokens)
        try:
            if consumed != len(tokens):
                return frozenset()
            first = self.table.first_byte[self._allowed_bits()]
            return frozenset(int(b) for b in np.unique(first) if b >= 0)
        finally:
            if consumed:
                self.matcher.rollback(consumed)


def _vocabulary(table: TokenTable) -> Any:
    """The vocabulary as llguidance takes it: an ``LLTokenizer`` over the exact token bytes."""
    llguidance = _import_llguidance()

    class Wrapped:  # what llguidance.TokenizerWrapper reads
        def __init__(self):
            self.eos_token_id, self.bos_token_id = table.eos_id, None
            self.tokens = [raw if raw is not None else f"<special {i}>".encode()
                           for i, raw in enumerate(table.token_bytes)]
            self.special_token_ids = [i for i, raw in enumerate(table.token_bytes) if raw is None]

        def __call__(self, text: bytes) -> list[int]:
            return table.encode(text.decode("utf-8", errors="replace"))

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrapped()))


def _import_llguidance():
    try:
        import llguidance
    except ImportError as error:
        raise DispatchError("the llguidance grammar backend is not installed: "
                            "`pip install llguidance`, or pass backend='outlines_core'") from error
    return llguidance
