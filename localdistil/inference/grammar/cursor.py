"""What every grammar engine provides: a :class:`GrammarEngine` (one canonical regular
expression compiled over one tokenizer's tokens) and the :class:`Cursor` each sequence walks it
with.

An engine implements :meth:`GrammarEngine.vocabulary` and :meth:`GrammarEngine.cursor`, and on
its cursor four primitives (:meth:`Cursor.allowed`, :meth:`Cursor.advance`,
:meth:`Cursor.is_final`, :meth:`Cursor.is_terminal`) and two helpers
(:meth:`Cursor._forced_bytes`, :meth:`Cursor._next_bytes_after`); :meth:`Cursor.take_forced`
is written once, here, on top of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy

    from localdistil.inference.tokens import TokenTable


class GrammarEngine:
    """One grammar engine's compiled form of a canonical regular expression over a
    :class:`TokenTable`; shared by every sequence, so immutable apart from caches that any
    number of threads may fill at once.

    A subclass compiles in ``__init__(regex, table)`` and raises ``ValueError`` where the
    expression cannot be compiled (:class:`~localdistil.inference.grammar.JsonGrammar` names
    the schema in the :class:`~localdistil.errors.DispatchError` it raises instead).
    """

    def __init__(self, regex: str, table: TokenTable) -> None:
        self.regex, self.table = regex, table

    @staticmethod
    def vocabulary(table: TokenTable) -> Any:
        """The tokenizer's part of a grammar: ``table``'s vocabulary as this engine takes it,
        made once per table (:meth:`TokenTable.view`) and shared by its grammars."""
        raise NotImplementedError

    def cursor(self) -> Cursor:
        """A fresh walker at the start of the text, for one sequence."""
        raise NotImplementedError


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
        """The bytes the grammar forces from here: while it admits exactly one next byte."""
        raise NotImplementedError

    def _next_bytes_after(self, forced: bytes) -> frozenset[int]:
        """The first bytes of the tokens the grammar allows once ``forced`` (the bytes forced
        from here) is written, without moving this cursor."""
        raise NotImplementedError

    def take_forced(self, limit: int) -> list[int]:
        """Advance over the tokens the grammar forces from here (at most ``limit``), return them.

        The forced text runs while the grammar admits exactly one next byte (``{"a":``,
        ``,"result":``); its tokens are the tokenizer's own encoding of that text, what a model
        fine-tuned on canonical outputs writes. Where what the grammar allows next would change
        the tokens of the text's last pre-token (:meth:`TokenTable.split_tail`), that
        pre-token is left to the model: tokenized alone, a forced ``"}}`` already reads as
        the end of a list (``"`` + ``}}``, where another item follows as ``"}`` + ``},``),
        and would make the model's choice for it. Where the grammar also allows a token that
        runs on past the forced text (``["`` where the text ends in ``[``), the last token is
        left too.
        """
        text = self._forced_bytes().decode("utf-8", errors="ignore")  # drops a split last char
        if not text or limit <= 0:
            return []
        head, changing = self.table.split_tail(text)
        if changing and self._next_bytes_after(text.encode()) & changing:
            text = head
            if not text:
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
