"""The KV cache of the prompt prefix one function's calls share, computed once and copied in.

:func:`localdistil.inference.generate.generate_json` takes a :class:`PromptPrefix` as
``prefix=``: the tokens it covers are not fed to the model at all, and the output is the same
as without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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
        prompt, if every prompt starts with the prefix (and goes on after it); else
        ``(0, None)``."""
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
            length = min(length, _common_start(prompts[0], other))
        if length < self.min_tokens:
            return
        tokens = tuple(prompts[0][:length])
        ids = torch.tensor([tokens], dtype=torch.long, device=next(model.parameters()).device)
        with torch.inference_mode():
            self._cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).cache
        self.tokens = tokens


def _common_start(first: list[int], second: list[int]) -> int:
    """How many tokens ``first`` and ``second`` share from the start."""
    return next((i for i, (a, b) in enumerate(zip(first, second)) if a != b),
                min(len(first), len(second)))

