"""Constrained decoding: a Hugging Face causal LM writes canonical JSON for a :class:`JsonGrammar`.

:func:`generate_json` runs its own decode loop over ``model(..., cache=..., use_cache=True)``
rather than ``model.generate``, for three things ``generate`` cannot do:

- fast-forward: where the grammar forces text (``{"a":``, ``,"result":``, the closing ``}``), its
  tokens are appended without sampling and fed to the model in the same forward pass as the
  token sampled before them, so a forced run costs no model step of its own;
- prompt lookup (greedy): where the text being written copies the prompt, tokens from the
  prompt are proposed and fed in the same forward pass; each is kept while it is the token
  greedy decoding under the grammar picks there, so one pass can write several tokens and the
  output is the one decoding token by token writes. Two kinds of proposal: the value of the
  argument ``key=`` right after the output writes the field ``"key":`` (an echoed argument is
  the same canonical JSON text); and the tokens that followed the last written ones in the
  prompt (a name, a number), only where they cost nothing: for a sequence decoding alone in a
  pass that feeds at most :data:`CHEAP_PASS_TOKENS` (a pass of one sequence costs about the
  same over 1-3 tokens), in a batch where a row feeds fewer tokens than the longest (its
  positions up to that width would be padding);
- per-sequence grammar state in a batch whose sequences grow by different numbers of tokens
  per step; a sequence that has finished leaves the batch (and its KV cache rows) at once.

The batch is left-padded; inside a step, sequences that add fewer tokens than the longest are
left-padded too, those positions (and proposed tokens that were not kept) masked out of
attention for good, and position ids count real tokens only, so each sequence sees what it would
see alone (greedy batch output equals one-at-a-time output). With a
:class:`~localdistil.inference.prefix.PromptPrefix`, the prefix every prompt shares is not fed at
all: its KV cache, computed once, is copied in.

Token choice runs in numpy, single-threaded: a torch op over the logits stalls whenever another
process holds a core the op's thread pool waits on (an OpenMP barrier waiting for a descheduled
thread), where numpy never waits. What each of these saves is measured by ``bench/dispatch.py``
(the README's *Benchmarks* section).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from localdistil.inference.grammar import Cursor, JsonGrammar
    from localdistil.inference.prefix import PromptPrefix
    from localdistil.inference.tokens import TokenTable


CHEAP_PASS_TOKENS = 3
"""Prompt lookup proposes tokens only while the pass feeds at most this many: on a small model
on CPU a pass over a few tokens costs about the same as over one (SmolLM2-135M in bf16 on the
2-core EPYC: 40 ms for 1 token, 43 for 2-4, 50 for 8). 4 was measured no better end to end than
3 (``bench/dispatch.py --extract-run``: 0.51x/0.47x of Outlines' latency against 0.48x/0.44x)."""


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


@dataclasses.dataclass(frozen=True)
class _DecodeSettings:
    """What one :func:`generate_json` call decodes under, the same for every sequence and step."""

    grammar: JsonGrammar
    max_new_tokens: int
    temperature: float = 0.0
    rng: numpy.random.Generator | None = None  # sampling only
    fast_forward: bool = True
    lookup: int = 0  # the most tokens prompt lookup proposes per step; 0: none
    pad_id: int = 0

    @property
    def table(self) -> TokenTable:
        return self.grammar.table


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
                  seed: int | None = None, fast_forward: bool = True, prompt_lookup: int = 4,
                  prefix: PromptPrefix | None = None) -> list[GenerationResult]:
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
            :class:`~localdistil.inference.prefix.PromptPrefix`); the output is the same either
            way.

    Returns:
        One :class:`GenerationResult` per prompt, in order. Generation stops as soon as the
        JSON is complete; the model is not asked for an EOS token.
    """
    import numpy as np
    import torch

    _check_arguments(tokenizer, grammar, prompts, max_new_tokens, temperature)
    settings = _DecodeSettings(
        grammar=grammar, max_new_tokens=max_new_tokens, temperature=temperature,
        rng=np.random.default_rng(seed) if temperature > 0 else None, fast_forward=fast_forward,
        lookup=prompt_lookup if temperature <= 0 else 0, pad_id=_pad_id(tokenizer))
    sequences = [_Sequence(cursor=grammar.cursor()) for _ in prompts]
    for sequence in sequences:
        _after_token(sequence, settings)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hook = head.register_forward_pre_hook(_contiguous_input) if head is not None else None
    try:
        with torch.inference_mode():
            _decode(model, settings, prompts, sequences, prefix)
    finally:
        if hook is not None:
            hook.remove()
    return [GenerationResult(text=grammar.table.decode(s.ids), token_ids=tuple(s.ids),
                             finished=s.finished, forced_count=s.forced_count) for s in sequences]


def _decode(model: PreTrainedModel, settings: _DecodeSettings, prompts: list[list[int]],
            sequences: list[_Sequence], prefix: PromptPrefix | None) -> None:
    """The loop: feed what each live sequence has not been fed (and its proposal), pick tokens."""
    import torch

    device = _device(model)
    live = [i for i, s in enumerate(sequences) if not s.done]
    if not live:
        return
    start, cache = prefix.start(model, [prompts[i] for i in live]) if prefix else (0, None)
    _propose([sequences[i] for i in live], [prompts[i] for i in live], settings,
             [len(prompts[i]) - start + len(sequences[i].feed) for i in live])
    chunks = [list(prompts[i][start:]) + sequences[i].feed + sequences[i].proposal for i in live]
    attention = torch.ones((len(live), start), dtype=torch.long, device=device)
    seen = torch.full((len(live),), start, dtype=torch.long, device=device)  # real tokens fed
    vocab = settings.table.size
    while live:
        input_ids, chunk_mask = _left_pad(chunks, settings.pad_id, device)
        attention = torch.cat([attention, chunk_mask], dim=1)
        positions = (seen[:, None] + chunk_mask.cumsum(dim=1) - 1).clamp(min=0)
        seen = seen + chunk_mask.sum(dim=1)
        kept = 1 + max(len(sequences[i].proposal) for i in live)  # positions whose logits we read
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                    cache=cache, use_cache=True, logits_to_keep=kept)
        cache = out.cache
        logits = out.logits[:, -kept:, :]
        if logits.shape[-1] < vocab:
            raise ValueError(f"the model scores {logits.shape[-1]} tokens but the tokenizer has "
                             f"{vocab}: they do not belong together")
        # Token choice runs in numpy on the CPU: single-threaded, so it never waits on a busy
        # core, and over the allowed ids only where they are few.
        scores = logits[..., :vocab].float().cpu().numpy()
        keep = []
        for row, index in enumerate(live):
            sequence = sequences[index]
            rejected = _accept(sequence, scores[row, kept - 1 - len(sequence.proposal):], settings)
            if rejected:  # proposed tokens the model saw but greedy decoding did not pick
                attention[row, attention.shape[1] - rejected:] = 0
                seen[row] -= rejected
            if not sequence.done:
                keep.append(row)
        _propose([sequences[live[row]] for row in keep], [prompts[live[row]] for row in keep],
                 settings, [len(sequences[live[row]].feed) for row in keep])
        chunks = [sequences[live[row]].feed + sequences[live[row]].proposal for row in keep]
        if len(keep) < len(live):
            if keep:
                rows = torch.tensor(keep, dtype=torch.long, device=device)
                cache.reorder_cache(rows)
                attention, seen = attention[rows], seen[rows]
            live = [live[row] for row in keep]


def _contiguous_input(module, args: tuple) -> tuple:
    """The LM head's input, copied to a tensor of its own. With ``logits_to_keep`` > 1 the model
    hands its head a slice of the hidden states whose strides still span the whole sequence,
    which ``matmul`` cannot fold into one matrix product: it falls back to a batched product
    over a copy of the head's weight per row (in bf16 on a CPU: 60 % of a batch's time, and
    57 ms instead of 4 per pass of a single sequence). ``contiguous()`` does not help one row:
    a tensor with a batch of 1 counts as contiguous whatever its first stride, and comes back
    as it was."""
    import torch

    return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])


def _accept(sequence: _Sequence, scores: numpy.ndarray, settings: _DecodeSettings) -> int:
    """Choose the sequence's next token(s) from ``scores`` (one row per fed position from its last
    real token on); return how many proposed tokens were not kept.

    Position ``j`` scores what follows the ``j``-th proposed token (position 0: the last real
    token). A proposed token is kept where it is the token chosen there; the first token chosen
    that differs from the proposal is kept as well and ends the step, as does a kept token the
    grammar forces text after (that text is fed next, as without a proposal).
    """
    proposal, cursor = sequence.proposal, sequence.cursor
    sequence.proposal = []
    guessed = 0  # proposed tokens chosen, so kept
    for row in scores:
        token = _choose(row, *cursor.allowed(), settings.temperature, settings.rng)
        if token is None:  # nothing allowed: a dead end (never expected)
            sequence.done = True
            break
        if token == settings.table.eos_id and cursor.is_final():
            sequence.done = sequence.finished = True
            break
        cursor.advance(token)
        sequence.ids.append(token)
        hit = guessed < len(proposal) and token == proposal[guessed]
        guessed += hit
        sequence.feed = [] if hit else [token]  # a kept guess is in the model already
        _after_token(sequence, settings)
        if not hit or sequence.done or sequence.feed:
            break
    return len(proposal) - guessed


def _propose(sequences: list[_Sequence], prompts: list[list[int]], settings: _DecodeSettings,
             ahead: list[int]) -> None:
    """Set each sequence's proposal for the next pass (up to ``settings.lookup`` tokens, never
    past the budget); ``ahead[i]`` is how many tokens ``sequences[i]`` feeds in that pass before
    its proposal:

    - where the output has just written ``"key":`` and the prompt holds the argument ``key=``,
      the tokens of that argument's value: prompts render arguments as ``key=<canonical JSON>``
      and outputs their fields as ``"key":<canonical JSON>``, so a field that echoes an argument
      is written with the very same text;
    - else the tokens that followed the latest earlier occurrence of the last few tokens in
      prompt + output (:func:`_continuation`), as many as the pass takes at no extra cost: for a
      sequence decoding alone, while its feed and proposal stay within
      :data:`CHEAP_PASS_TOKENS`; in a batch, up to the width the pass has anyway (the longest
      row's tokens), where a shorter row's positions would otherwise be padding.
    """
    sizes = [min(settings.lookup, settings.max_new_tokens - len(s.ids) - 1) if s.ids else 0
             for s in sequences]
    for sequence, prompt, size in zip(sequences, prompts, sizes):
        sequence.proposal = (_argument_value(sequence.ids, prompt, settings.table)[:size]
                             if size > 0 else [])
    if len(sequences) == 1:
        rooms = [CHEAP_PASS_TOKENS - len(sequences[0].feed)]
    else:
        width = max((fed + len(s.proposal) for s, fed in zip(sequences, ahead)), default=0)
        rooms = [width - fed for fed in ahead]
    for sequence, prompt, size, room in zip(sequences, prompts, sizes, rooms):
        if not sequence.proposal and min(size, room) > 0:
            sequence.proposal = _continuation(sequence, prompt, min(size, room))


def _continuation(sequence: _Sequence, prompt: list[int], size: int,
                  longest_match: int = 3) -> list[int]:
    """Up to ``size`` tokens that followed the latest earlier occurrence of the sequence's last
    few tokens (up to ``longest_match``, the longest that occurs) in prompt + output, where the
    grammar allows the first of them next; else ``[]``."""
    import numpy as np

    context = list(prompt) + sequence.ids
    for length in range(min(longest_match, len(context) - 1), 0, -1):
        suffix = context[-length:]
        for start in range(len(context) - length - 1, -1, -1):
            if context[start:start + length] == suffix:
                following = context[start + length:start + length + size]
                ids, inverted = sequence.cursor.allowed()
                index = int(np.searchsorted(ids, following[0]))
                present = index < len(ids) and int(ids[index]) == following[0]
                return following if present != inverted else []
    return []


def _after_token(sequence: _Sequence, settings: _DecodeSettings) -> None:
    """Append the run forced from the sequence's position, then settle whether it is done."""
    cursor, budget = sequence.cursor, settings.max_new_tokens
    if settings.fast_forward and not cursor.is_terminal():
        forced = cursor.take_forced(budget - len(sequence.ids))
        sequence.ids.extend(forced)
        sequence.feed.extend(forced)
        sequence.forced_count += len(forced)
    if cursor.is_terminal():
        sequence.done = sequence.finished = True
    elif len(sequence.ids) >= budget:
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


def budget_for(longest: int, *, factor: float = 1.5, margin: int = 8) -> int:
    """The token budget of one answer whose longest seen (or estimated) form is ``longest``
    tokens: ``longest`` x ``factor`` + ``margin``."""
    return int(longest * factor) + margin
