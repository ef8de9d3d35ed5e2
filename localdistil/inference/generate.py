"""Constrained decoding: a Hugging Face causal LM writes canonical JSON for a :class:`JsonGrammar`.

:func:`generate_json` runs its own decode loop over ``model(..., past_key_values=...,
use_cache=True)`` rather than ``model.generate``, for three things ``generate`` cannot do:

- fast-forward: where the grammar forces text (``{"a":``, ``,"result":``, the closing ``}``), its
  tokens are appended without sampling and fed to the model in the same forward pass as the
  token sampled before them, so a forced run costs no model step of its own;
- prompt lookup (greedy): where the text being written copies the prompt, tokens from the
  prompt are proposed and fed in the same forward pass; each is kept while it is the token
  greedy decoding under the grammar picks there, so one pass can write several tokens and the
  output is the one decoding token by token writes. Two kinds of proposal: the value of the
  argument ``key=`` right after the output writes the field ``"key":`` (an echoed argument is
  the same canonical JSON text), in a batch too; and, for a sequence decoding alone in a pass
  that feeds at most :data:`CHEAP_PASS_TOKENS`, the tokens that followed the last written ones
  in the prompt (a name, a number) -- a pass of one sequence costs about the same over 1-3
  tokens, while in a batch every guess is extra compute;
- per-sequence grammar state in a batch whose sequences grow by different numbers of tokens
  per step; a sequence that has finished leaves the batch (and its KV cache rows) at once.

The batch is left-padded; inside a step, sequences that add fewer tokens than the longest are
left-padded too, those positions (and proposed tokens that were not kept) masked out of
attention for good, and position ids count real tokens only, so each sequence sees what it would
see alone (greedy batch output equals one-at-a-time output). With a :class:`PromptPrefix`, the
prefix every prompt shares is not fed at all: its KV cache, computed once, is copied in.

Token choice runs in numpy, single-threaded: a torch op over the 49k logits costs ~0.03 ms on
an idle machine but stalled 10-20 ms whenever another process held the second core (an OpenMP
barrier waiting for a descheduled thread).

Measured by ``bench/dispatch.py`` on SmolLM2-135M-Instruct with a Multiply adapter, 2 idle CPU
cores, default backend, 2026-11 (see :mod:`localdistil.inference.grammar` for the backends):

- constrained vs unconstrained decoding at batch 1, one pass per token: 0.91-0.98x per token
  (target <= 1.05x; the grammar costs ~0.1 ms of a 34-46 ms pass);
- one ``Multiply(a:int, b:int, result:int)`` call (~21 tokens, 7 forced): 993 ms one pass per
  token, 701 ms with fast-forward, 494 ms adding prompt lookup (8-9 passes instead of ~15),
  477 ms adding the cached prefix (13 of 29 prompt tokens); 0.40-0.42x of ``outlines.Generator``;
- batch 8 vs batch 1: 3.2-3.5x the calls per second, token for token the same outputs.

:func:`max_tokens_for` picks ``max_new_tokens`` for a schema from the outputs seen in training.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from localdistil.inference.grammar import Cursor, JsonGrammar
    from localdistil.inference.tokens import TokenTable


#: Prompt lookup proposes tokens only while the pass feeds at most this many: on SmolLM2-135M
#: on the 2-core CPU a pass over 1, 2 or 3 tokens took 34, 37 and 39 ms, over 4 61 ms (the
#: matrix kernels change at 4 rows), with 1 or 2 threads alike.
CHEAP_PASS_TOKENS = 3


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """One generated output.

    Attributes:
        text: the generated text; a complete canonical JSON instance when ``finished``, else the
            partial text written before the token budget ran out.
        token_ids: the generated token ids (forced ones included, no EOS).
        finished: whether the grammar reached an accepting state (the JSON is complete).
        forced_count: how many of ``token_ids`` were forced by the grammar, not sampled.
    """

    text: str
    token_ids: tuple[int, ...]
    finished: bool
    forced_count: int = 0

    @property
    def token_count(self) -> int:
        """How many tokens were generated (``len(token_ids)``)."""
        return len(self.token_ids)


class PromptPrefix:
    """The KV cache of the prompt prefix one function's calls share, computed once, reused after.

    Every prompt of a function starts with the same tokens (the chat template, the system line,
    ``name(``); their keys and values depend on those tokens alone, so they need computing only
    once. The prefix is learnt from the prompts themselves: the longest common start of two
    different ones (the first batch of several, or the first two calls), as long as it is at
    least ``min_tokens``. A prompt that does not start with it is decoded from scratch, and two
    later prompts that share another prefix replace it.

    Not thread-safe: keep one per model and use it under the lock that serialises generation
    (dispatch keeps one per loaded adapter).
    """

    def __init__(self, min_tokens: int = 4) -> None:
        self.min_tokens = min_tokens
        self.tokens: tuple[int, ...] = ()
        self._cache: Any = None
        self._last: list[int] | None = None

    def start(self, model: PreTrainedModel, prompts: list[list[int]]) -> tuple[int, Any]:
        """``(n, cache)``: the prefix length and a fresh copy of its KV cache, one row per
        prompt, if every prompt starts with the prefix (and goes on after it); else ``(0, None)``."""
        import copy

        if not self._covers(prompts):
            self._learn(model, prompts)
            if not self._covers(prompts):
                return 0, None
        cache = copy.deepcopy(self._cache)
        if len(prompts) > 1:
            cache.batch_repeat_interleave(len(prompts))
        return len(self.tokens), cache

    def _covers(self, prompts: list[list[int]]) -> bool:
        n = len(self.tokens)
        return n > 0 and all(len(p) > n and tuple(p[:n]) == self.tokens for p in prompts)

    def _learn(self, model: PreTrainedModel, prompts: list[list[int]]) -> None:
        import torch

        others = list(prompts[1:]) or ([self._last] if self._last is not None else [])
        self._last = list(prompts[0])
        if not others:
            return
        length = min(len(p) for p in prompts) - 1  # every prompt keeps a token to feed
        for other in others:
            length = min(length, next((i for i, (a, b) in enumerate(zip(prompts[0], other)) if a != b),
                                      min(len(prompts[0]), len(other))))
        if length < self.min_tokens:
            return
        tokens = tuple(prompts[0][:length])
        ids = torch.tensor([tokens], dtype=torch.long, device=_device(model))
        with torch.inference_mode():
            self._cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
        self.tokens = tokens


@dataclasses.dataclass
class _Sequence:
    """The decoding state of one prompt."""

    cursor: Cursor
    ids: list[int] = dataclasses.field(default_factory=list)
    feed: list[int] = dataclasses.field(default_factory=list)  # tokens the model has not seen yet
    proposal: list[int] = dataclasses.field(default_factory=list)  # guesses fed after ``feed``
    forced_count: int = 0
    done: bool = False
    finished: bool = False


def generate_json(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, grammar: JsonGrammar,
                  prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
                  seed: int | None = None, fast_forward: bool = True,
                  prompt_lookup: int = 4, prefix: PromptPrefix | None = None) -> list[GenerationResult]:
    """Generate one canonical JSON text per prompt, under ``grammar``, in one batch.

    Args:
        model: a causal LM in eval mode (``AutoModelForCausalLM``, PEFT-wrapped or merged).
        tokenizer: the tokenizer ``grammar`` was built for (its pad id pads the batch).
        grammar: from :meth:`JsonGrammar.for_schema` with this tokenizer.
        prompts: token ids of each prompt (chat template already applied).
        max_new_tokens: the most tokens generated per prompt, forced ones included. A sequence
            that reaches it before the JSON is complete comes back with ``finished=False``.
        temperature: 0 for greedy decoding (the default), else sampling at this temperature.
        seed: seeds sampling (the same batch with the same seed gives the same outputs).
        fast_forward: append forced tokens without sampling, in the same forward pass as the
            token before them. False samples every token, one model step each.
        prompt_lookup: with greedy decoding of one sequence, propose up to this many tokens
            per step from the prompt (an argument's value where the output writes a field of the
            same name, else the tokens that followed the last written ones there, only up to
            :data:`CHEAP_PASS_TOKENS` fed in a pass), kept as far as greedy decoding agrees; 0
            turns it off. The output is the same either way.
        prefix: reuse the KV cache of the prompt prefix shared by this function's calls (see
            :class:`PromptPrefix`); the output is the same either way.

    Returns:
        One :class:`GenerationResult` per prompt, in order. Generation stops as soon as the
        JSON is complete; the model is not asked for an EOS token.
    """
    import numpy as np
    import torch

    _check_arguments(tokenizer, grammar, prompts, max_new_tokens, temperature)
    rng = np.random.default_rng(seed) if temperature > 0 else None
    sequences = [_Sequence(cursor=grammar.cursor()) for _ in prompts]
    for sequence in sequences:
        _after_token(sequence, max_new_tokens, fast_forward)
    with torch.inference_mode():
        _decode(model, grammar, prompts, sequences, _pad_id(tokenizer), max_new_tokens, temperature,
                rng, fast_forward, prompt_lookup if temperature <= 0 else 0, prefix)
    return [GenerationResult(text=grammar.table.decode(s.ids), token_ids=tuple(s.ids),
                             finished=s.finished, forced_count=s.forced_count) for s in sequences]


def _decode(model, grammar, prompts, sequences, pad_id, max_new_tokens, temperature, rng,
            fast_forward, lookup, prefix) -> None:
    """The loop: feed what each live sequence has not been fed (and its proposal), pick tokens."""
    import torch

    device = _device(model)
    live = [i for i, s in enumerate(sequences) if not s.done]
    if not live:
        return
    for index in live:
        _propose(sequences[index], prompts[index], lookup, max_new_tokens, grammar.table, len(live) == 1)
    start, cache = prefix.start(model, [prompts[i] for i in live]) if prefix else (0, None)
    chunks = [list(prompts[i][start:]) + sequences[i].feed + sequences[i].proposal for i in live]
    attention = torch.ones((len(live), start), dtype=torch.long, device=device)
    seen = torch.full((len(live),), start, dtype=torch.long, device=device)  # real tokens fed so far
    vocab = grammar.table.size
    while live:
        input_ids, chunk_mask = _left_pad(chunks, pad_id, device)
        attention = torch.cat([attention, chunk_mask], dim=1)
        positions = (seen[:, None] + chunk_mask.cumsum(dim=1) - 1).clamp(min=0)
        seen = seen + chunk_mask.sum(dim=1)
        kept = 1 + max(len(sequences[i].proposal) for i in live)  # positions whose logits we read
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                    past_key_values=cache, use_cache=True, logits_to_keep=kept)
        cache = out.past_key_values
        logits = out.logits[:, -kept:, :]
        if logits.shape[-1] < vocab:
            raise ValueError(f"the model scores {logits.shape[-1]} tokens but the tokenizer has "
                             f"{vocab}: they do not belong together")
        # Token choice runs in numpy on the CPU: single-threaded, so it never waits on a busy core,
        # and over the allowed ids only where they are few.
        scores = logits[..., :vocab].float().cpu().numpy()
        keep = []
        for row, index in enumerate(live):
            sequence = sequences[index]
            rejected = _accept(sequence, scores[row, kept - 1 - len(sequence.proposal):], grammar,
                               max_new_tokens, temperature, rng, fast_forward)
            if rejected:  # proposed tokens the model saw but greedy decoding did not pick
                attention[row, attention.shape[1] - rejected:] = 0
                seen[row] -= rejected
            if not sequence.done:
                keep.append(row)
        for row in keep:  # n-gram guesses only for a sequence decoding alone (see _propose)
            index = live[row]
            _propose(sequences[index], prompts[index], lookup, max_new_tokens, grammar.table, len(keep) == 1)
        chunks = [sequences[live[row]].feed + sequences[live[row]].proposal for row in keep]
        if len(keep) < len(live):
            if keep:
                rows = torch.tensor(keep, dtype=torch.long, device=device)
                cache.reorder_cache(rows)
                attention, seen = attention[rows], seen[rows]
            live = [live[row] for row in keep]


def _accept(sequence: _Sequence, scores: numpy.ndarray, grammar: JsonGrammar, max_new_tokens: int,
            temperature: float, rng, fast_forward: bool) -> int:
    """Choose the sequence's next token(s) from ``scores`` (one row per fed position from its last
    real token on); return how many proposed tokens were not kept.

    Position ``j`` scores what follows the ``j``-th proposed token (position 0: the last real
    token). A proposed token is kept where it is the token chosen there; the first token chosen
    that differs from the proposal is kept as well and ends the step, as does a kept token the
    grammar forces text after (that text is fed next, as without a proposal).
    """
    proposal, cursor = sequence.proposal, sequence.cursor
    sequence.proposal = []
    for position, row in enumerate(scores):
        token = _choose(row, *cursor.allowed(), temperature, rng)
        if token is None:  # nothing allowed: a dead end (never expected)
            sequence.done = True
        elif token == grammar.table.eos_id and cursor.is_final():
            sequence.done = sequence.finished = True
        else:
            cursor.advance(token)
            sequence.ids.append(token)
            guessed = position < len(proposal) and token == proposal[position]
            sequence.feed = [] if guessed else [token]  # a kept guess is in the model already
            _after_token(sequence, max_new_tokens, fast_forward)
            if guessed and not sequence.done and not sequence.feed:
                continue
            return len(proposal) - position - guessed
        return len(proposal) - position
    return 0


def _propose(sequence: _Sequence, prompt: list[int], size: int, max_new_tokens: int,
             table: TokenTable | None = None, alone: bool = True, longest_match: int = 3) -> None:
    """Set the sequence's proposal, never past the token budget:

    - where the output has just written ``"key":`` and the prompt holds the argument ``key=``,
      the tokens of that argument's value (up to ``size``): prompts render arguments as
      ``key=<canonical JSON>`` and outputs their fields as ``"key":<canonical JSON>``, so a field
      that echoes an argument is written with the very same text (needs ``table``);
    - else, for a sequence decoding ``alone`` (in a batch a guess is extra compute), the tokens
      that followed the latest earlier occurrence of the last few tokens (up to
      ``longest_match``, the longest that occurs) in prompt + output, only where the grammar
      allows the first of them next and the pass feeds at most :data:`CHEAP_PASS_TOKENS`.
    """
    import numpy as np

    size = min(size, max_new_tokens - len(sequence.ids) - 1)
    sequence.proposal = []
    if size <= 0 or not sequence.ids:
        return
    if table is not None and (echoed := _argument_value(sequence.ids, prompt, table)):
        sequence.proposal = echoed[:size]
        return
    size = min(size, CHEAP_PASS_TOKENS - len(sequence.feed))
    if size <= 0 or not alone:
        return
    context = list(prompt) + sequence.ids
    for length in range(min(longest_match, len(context) - 1), 0, -1):
        suffix = context[-length:]
        for start in range(len(context) - length - 1, -1, -1):
            if context[start:start + length] == suffix:
                following = context[start + length:start + length + size]
                ids, inverted = sequence.cursor.allowed()
                index = int(np.searchsorted(ids, following[0]))
                present = index < len(ids) and int(ids[index]) == following[0]
                if present != inverted:
                    sequence.proposal = following
                return


def _after_token(sequence: _Sequence, max_new_tokens: int, fast_forward: bool) -> None:
    """Append the run forced from the sequence's position, then settle whether it is done."""
    cursor = sequence.cursor
    if fast_forward and not cursor.is_terminal():
        forced = cursor.take_forced(max_new_tokens - len(sequence.ids))
        sequence.ids.extend(forced)
        sequence.feed.extend(forced)
        sequence.forced_count += len(forced)
    if cursor.is_terminal():
        sequence.done = sequence.finished = True
    elif len(sequence.ids) >= max_new_tokens:
        sequence.done = True
        sequence.finished = cursor.is_final()


def _choose(scores: numpy.ndarray, ids: numpy.ndarray, inverted: bool, temperature: float,
            rng: numpy.random.Generator | None) -> int | None:
    """The next token from one row of scores: greedy (temperature 0) or sampled.

    ``ids`` are the allowed tokens, or with ``inverted`` the forbidden ones (see
    :meth:`Cursor.allowed`). Greedy ties go to the lowest id either way.
    """
    import numpy as np

    if inverted:
        scores[ids] = -np.inf  # the row is this step's own copy of the logits
        values = scores
    elif len(ids) == 0:
        return None
    else:
        values = scores[ids]
    if temperature <= 0:
        best = int(np.argmax(values))
    else:
        weights = np.exp((values.astype(np.float64) - values.max()) / temperature)
        cumulative = np.cumsum(weights)
        best = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")),
                   len(cumulative) - 1)
    return best if inverted else int(ids[best])


_FIELD_KEY = re.compile(rb'[{,]"([A-Za-z_][A-Za-z0-9_]*)":$')


def _argument_value(written: list[int], prompt: list[int], table: TokenTable) -> list[int]:
    """The prompt's tokens from the value of argument ``key=`` on, where ``written`` ends with
    ``"key":`` and a prompt token starts exactly at that value; else ``[]``."""
    import bisect

    tail = b"".join(table.token_bytes[t] or b"" for t in written[-8:] if 0 <= t < table.size)
    field = _FIELD_KEY.search(tail)
    if field is None:
        return []
    pieces = [table.token_bytes[t] or b"" if 0 <= t < table.size else b"" for t in prompt]
    starts, offset = [], 0
    for piece in pieces:
        starts.append(offset)
        offset += len(piece)
    text = b"".join(pieces)
    for argument in re.finditer(rb"[(,] ?" + re.escape(field.group(1)) + rb"=", text):
        index = bisect.bisect_left(starts, argument.end())
        if index < len(prompt) and starts[index] == argument.end():
            return list(prompt[index:])
    return []


def _left_pad(chunks: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``chunks``, left-padded to the longest."""
    import torch

    width = max(len(chunk) for chunk in chunks)
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for row, chunk in enumerate(chunks):
        if chunk:
            ids[row, width - len(chunk):] = torch.tensor(chunk, dtype=torch.long)
            mask[row, width - len(chunk):] = 1
    return ids.to(device), mask.to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _check_arguments(tokenizer, grammar, prompts, max_new_tokens, temperature) -> None:
    """Raise ValueError/TypeError for calls that cannot be served (programming errors)."""
    import numbers

    from localdistil.inference.grammar import JsonGrammar

    if not isinstance(grammar, JsonGrammar):
        raise TypeError("grammar must come from JsonGrammar.for_schema, not "
                        f"{type(grammar).__name__}")
    if not grammar.table.belongs_to(tokenizer):
        raise ValueError("grammar was built for a different tokenizer: build it with "
                         "JsonGrammar.for_schema(schema, tokenizer) for this one")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token id lists")
    for number, prompt in enumerate(prompts):
        if (not isinstance(prompt, (list, tuple)) or not prompt
                or not all(isinstance(t, numbers.Integral) for t in prompt)):
            raise ValueError(f"prompts[{number}] must be a non-empty list of token ids (ints)")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, not {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, not {temperature!r}")


# --- token budget ---------------------------------------------------------------------------


def budget_for(longest: int, *, factor: float = 1.5, margin: int = 8) -> int:
    """The token budget of one answer whose longest seen (or estimated) form is ``longest``
    tokens: ``longest`` x ``factor`` + ``margin``."""
    return int(longest * factor) + margin


def max_tokens_for(schema: dict[str, Any], observed_output_texts: list[str] | tuple[str, ...],
                   tokenizer: PreTrainedTokenizerBase, *, factor: float = 1.5,
                   margin: int = 8) -> int:
    """A max_new_tokens budget for one output of ``schema``.

    From observed outputs (the training targets): the longest one's token count x ``factor`` +
    ``margin``. With none observed, an estimate from the schema: its fixed text (keys and
    punctuation) tokenized, plus an allowance per value (strings 32 tokens or their
    ``maxLength``, numbers 24, lists 8 items or their ``maxItems``), x ``factor`` + ``margin``.
    """
    lengths = [len(tokenizer.encode(text, add_special_tokens=False))
               for text in observed_output_texts]
    if lengths:
        return budget_for(max(lengths), factor=factor, margin=margin)
    defs = schema.get("$defs") or schema.get("definitions") or {}
    return budget_for(_estimate(schema, defs, tokenizer, 0), factor=factor, margin=margin)


def _estimate(schema: Any, defs: dict[str, Any], tokenizer: PreTrainedTokenizerBase,
              depth: int) -> int:
    """Rough token count of the longest likely canonical text of ``schema``."""
    if not isinstance(schema, dict) or depth > 8:
        return 16
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _estimate(defs.get(ref.rsplit("/", 1)[-1], {}), defs, tokenizer, depth + 1)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return max(_estimate(sub, defs, tokenizer, depth + 1) for sub in schema[key])
    if "const" in schema or "enum" in schema:
        options = [schema["const"]] if "const" in schema else list(schema["enum"])
        texts = [json.dumps(option, ensure_ascii=False) for option in options]
        return max((len(tokenizer.encode(text, add_special_tokens=False)) for text in texts),
                   default=1)
    kind = schema.get("type")
    if isinstance(kind, list):
        return max(_estimate({**schema, "type": k}, defs, tokenizer, depth + 1) for k in kind)
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        skeleton = "{" + ",".join(f'"{name}":' for name in properties) + "}"
        values = sum(_estimate(sub, defs, tokenizer, depth + 1) for sub in properties.values())
        extra = 4 * 8 if schema.get("additionalProperties") not in (None, False) else 0
        return len(tokenizer.encode(skeleton, add_special_tokens=False)) + values + extra
    if kind == "array":
        items = schema.get("prefixItems")
        if isinstance(items, list):
            return 2 + sum(1 + _estimate(sub, defs, tokenizer, depth + 1) for sub in items)
        count = schema.get("maxItems", 8)
        return 2 + count * (1 + _estimate(schema.get("items", {}), defs, tokenizer, depth + 1))
    if kind == "string":
        return 2 + int(schema.get("maxLength", 32))
    if kind in ("integer", "number"):
        return 24 if kind == "number" else 12
    if kind in ("boolean", "null"):
        return 2
    return 16
