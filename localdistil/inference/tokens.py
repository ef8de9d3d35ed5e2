"""The tokenizer side of the output grammar: the exact bytes of every token of a Hugging Face
tokenizer, and each grammar engine's view of that vocabulary (made by the engine, kept here).

A :class:`TokenTable` is made once per tokenizer (``JsonGrammar.for_schema`` in
:mod:`localdistil.inference.grammar` caches it) and shared by every grammar built over that
tokenizer.
Token bytes follow the tokenizer's own decoder (:func:`_decoder_style`): byte-level tokenizers
(GPT-2, Llama 3, SmolLM) map each character of a token back through the GPT-2 byte alphabet;
SentencePiece-style ones (metaspace) turn ``\\u2581`` into a space and ``<0xNN>`` into byte NN;
anything else falls back to ``convert_tokens_to_string``. Special tokens have no bytes and never
appear in JSON; added tokens are their plain text.

The table also encodes text as the tokenizer does (for forced runs) and decodes token ids from
the exact bytes (no clean-up of spaces), so the text decoded is the text the grammar checked.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from transformers import PreTrainedTokenizerBase


#: Forced texts whose split (:meth:`TokenTable.split_tail`) is kept; past this many the cache
#: starts over.
TAIL_CACHE_SIZE = 4096
_ALL_BYTES = frozenset(range(256))
#: Characters standing for every non-ASCII first byte (a letter, a symbol) ...
PROBE_NON_ASCII = ("é", "€")
#: ... and what may follow the first one in JSON, when :meth:`TokenTable.split_tail` asks
#: whether a continuation changes a tail's tokens (merges reach two characters ahead:
#: ``":[`` + ``{"``).
PROBE_SECOND = ("", '"', "{", "}", "[", "]", ",", ":", "a", "0", " ")


class TokenTable:
    """The exact bytes of every token of one tokenizer, and each engine's view of them.

    Special tokens (``<|im_end|>`` and the like) have no bytes (``None``) and never appear in
    JSON; the EOS token is offered by the grammar only where the JSON is complete.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        import numpy as np

        self.token_bytes = _token_bytes(tokenizer)
        self.size = len(self.token_bytes)
        eos = tokenizer.eos_token_id
        self.eos_id = int(eos) if eos is not None else None
        self.lengths = np.array([len(raw or b"") for raw in self.token_bytes], dtype=np.int64)
        self.first_byte = np.array([raw[0] if raw else -1 for raw in self.token_bytes],
                                   dtype=np.int16)
        self.single_byte = [-1] * 256  # byte -> id of the token that is exactly that byte
        for token_id, raw in enumerate(self.token_bytes):
            if raw is not None and len(raw) == 1 and self.single_byte[raw[0]] < 0:
                self.single_byte[raw[0]] = token_id
        self._tokenizer = weakref.ref(tokenizer)
        self._lock = threading.Lock()
        self._views: dict[str, Any] = {}
        self._tails: dict[str, tuple[str, frozenset[int]]] = {}

    def encode(self, text: str) -> list[int]:
        """The tokenizer's own ids for ``text``, no special tokens added."""
        tokenizer = self._tokenizer()
        if tokenizer is None:  # the grammar outlived its tokenizer: no forced runs, still correct
            return []
        return list(tokenizer.encode(text, add_special_tokens=False))

    def split_tail(self, text: str) -> tuple[str, frozenset[int]]:
        """``text`` without its last pre-token, and the bytes that, written next, would change
        how that pre-token is tokenized.

        A byte-level BPE tokenizer first splits text into pre-tokens (runs of letters, of
        digits, of punctuation) and tokenizes each alone, so the tokens of every pre-token but
        the last are fixed whatever follows; the last one's may not be: SmolLM2 writes
        ``"}},{`` as ``"}`` + ``},`` + ``{"`` but ``"}}]}`` as ``"`` + ``}}`` + ``]}``, so
        ``,`` changes the tokens of ``"}}``. Each next byte is tried with the likely second
        characters of :data:`PROBE_SECOND`; bytes from 128 up (the start of a non-ASCII
        character) count as changing when ``é`` or ``€`` would. A tokenizer without a
        pre-tokenizer has one pre-token: the head is empty and every byte changes it. Cached per
        text (forced runs repeat).
        """
        found = self._tails.get(text)
        if found is not None:
            return found
        tokenizer = self._tokenizer()
        pre_tokenizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer",
                                None)
        if tokenizer is None or pre_tokenizer is None:
            found = ("", _ALL_BYTES)
        else:
            pieces = pre_tokenizer.pre_tokenize_str(text)
            start = pieces[-1][1][0] if pieces else 0
            head, tail = text[:start], text[start:]
            found = (head, self._changing_bytes(tokenizer, tail))
        with self._lock:
            if len(self._tails) >= TAIL_CACHE_SIZE:
                self._tails.clear()
            self._tails[text] = found
        return found

    @staticmethod
    def _changing_bytes(tokenizer: Any, tail: str) -> frozenset[int]:
        """The first bytes (each ASCII character, and :data:`PROBE_NON_ASCII` for the rest) of
        the continuations, with each of :data:`PROBE_SECOND` after it, after which ``tail`` is
        no longer tokenized as it is alone."""
        firsts = [chr(byte) for byte in range(128)] + list(PROBE_NON_ASCII)
        texts = [tail] + [tail + first + second for first in firsts for second in PROBE_SECOND]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        alone, width = encoded[0], len(PROBE_SECOND)
        changing = set()
        for number, first in enumerate(firsts):
            group = encoded[1 + number * width: 1 + (number + 1) * width]
            if any(ids[: len(alone)] != alone for ids in group):
                changing.update(range(128, 256) if first in PROBE_NON_ASCII else (ord(first),))
        return frozenset(changing)

    def belongs_to(self, tokenizer: PreTrainedTokenizerBase) -> bool:
        """Whether this table was made from ``tokenizer`` (the very object)."""
        return self._tokenizer() is tokenizer

    def decode(self, token_ids: list[int] | tuple[int, ...]) -> str:
        """The text of ``token_ids``, from the exact token bytes (no clean-up of spaces)."""
        raw = b"".join(self.token_bytes[i] or b"" for i in token_ids if 0 <= i < self.size)
        return raw.decode("utf-8", errors="replace")

    def view(self, name: str, make: Callable[[TokenTable], Any]) -> Any:
        """The vocabulary as grammar engine ``name`` takes it: ``make(self)``, made once."""
        with self._lock:
            if name not in self._views:
                self._views[name] = make(self)
            return self._views[name]


def _token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes | None]:
    """Each token id's exact bytes; ``None`` for special tokens."""
    vocab = tokenizer.get_vocab()
    size = max(max(vocab.values()) + 1, len(tokenizer))
    special = set(tokenizer.all_special_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special.update(i for i, token in added.items() if getattr(token, "special", False))
    style = _decoder_style(tokenizer)
    if style == "byte_level":
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        char_to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    table: list[bytes | None] = [None] * size
    for token, token_id in vocab.items():
        if token_id in special:
            continue
        if token_id in added:  # added tokens are stored as their plain text
            table[token_id] = str(getattr(added[token_id], "content", token)).encode()
            continue
        raw = None
        if style == "byte_level":
            try:
                raw = bytes(char_to_byte[char] for char in token)
            except KeyError:
                raw = None
        elif style == "metaspace":
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                raw = bytes([int(token[3:5], 16)])
            else:
                raw = token.replace("\u2581", " ").encode()
        if raw is None:
            raw = tokenizer.convert_tokens_to_string([token]).encode()
        table[token_id] = raw
    return table


def _decoder_style(tokenizer: PreTrainedTokenizerBase) -> str:
    """``byte_level`` (GPT-2, Llama 3, SmolLM), ``metaspace`` (SentencePiece) or ``other``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "other"
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders") or []}
    if "ByteLevel" in kinds:
        return "byte_level"
    if kinds & {"Metaspace", "ByteFallback", "Replace"}:
        return "metaspace"
    return "other"
