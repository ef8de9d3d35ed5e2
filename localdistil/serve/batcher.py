"""Concurrent requests for one model, decoded together.

A request submits its prompt and waits. One task per served model collects what arrives within
``wait_s`` of the first (at most ``max_batch`` items) -- or, while callers the last batch
answered have not sent their next request yet, up to :data:`RETURN_WAIT_S` for them, so that
concurrent clients keep sharing one batch instead of splitting into halves that take turns. It
groups the items by what must be the same across a batch (the engine, the schema, the token
budget and the sampling settings), and answers each group with ONE engine call in the
:func:`engine_thread`, so the event loop never waits on generation. Whatever arrives while a
batch decodes is the next batch.

On a CPU, concurrent forward passes only compete for the same cores; batching is how concurrent
clients share the model (see the README's *Benchmarks*). The engine gives one outcome per item,
so one item's failure is that item's; should an engine call raise, its items are answered again
one by one so that only the item at fault gets the error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from localdistil.inference.engine import Engine, Outcome
from localdistil.spec import schema_hash

log = logging.getLogger(__name__)

#: How long a batch waits at most for the callers the last batch answered to send again.
RETURN_WAIT_S = 0.05
#: Callers answered longer ago than this are not waited for.
RETURN_WINDOW_S = 1.0


@functools.cache
def engine_thread() -> ThreadPoolExecutor:
    """The one thread that loads the served models and makes every engine call of the server.

    On a CPU a model decodes faster in the thread that loaded it than in another one: a batch
    of 8 ``normalize_quantity`` calls took 424-450 ms there and 550-600 ms in a thread of
    ``asyncio.to_thread``'s pool (measured on the 2-core EPYC, the cause inside the CPU
    libraries not pinned down). Generation is serialised anyway, so one thread costs nothing.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="localdistil-engine")


@dataclasses.dataclass(frozen=True)
class Decode:
    """What one item is decoded under; items of a batch share all of it."""

    engine: Engine
    schema: dict[str, Any]
    budget: int
    temperature: float = 0.0
    seed: int | None = None

    def key(self) -> tuple[Any, ...]:
        """Items with equal keys may share a batch. A seeded sampled request decodes alone:
        the rows of a batch draw from one random stream, so a batch-mate would change what
        the seed gives."""
        alone = id(self) if self.temperature > 0 and self.seed is not None else None
        return (id(self.engine), schema_hash(self.schema), self.budget, self.temperature,
                self.seed, alone)


@dataclasses.dataclass
class _Job:
    prompt: list[int]
    decode: Decode
    future: asyncio.Future[Outcome]


class Batcher:
    """Batches one model's concurrent requests (see the module's docstring).

    Args:
        max_batch: the most items decoded in one engine call.
        wait_s: how long the first item of a batch waits for others.

    Attributes:
        calls: engine calls made so far.
        items: items answered so far (``items / calls`` is the mean batch size).
    """

    def __init__(self, *, max_batch: int = 8, wait_s: float = 0.005):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.max_batch = max_batch
        self.wait_s = max(0.0, wait_s)
        self.calls = 0
        self.items = 0
        self._pending: list[_Job] = []
        self._answered = 0  # items the last batch answered
        self._answered_at = 0.0  # when (the loop's clock)
        self._arrivals = 0  # items submitted since then
        self._arrived = asyncio.Event()  # made anew with the task (a new event loop)
        self._task: asyncio.Task[None] | None = None

    async def submit(self, prompt: Sequence[int], decode: Decode) -> Outcome:
        """The outcome of one prompt, decoded in a batch with whatever arrives with it.

        Raises:
            Exception: what the engine raised for this item alone.
        """
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._run())
        job = _Job(list(prompt), decode, loop.create_future())
        self._pending.append(job)
        self._arrivals += 1
        self._arrived.set()
        return await job.future

    async def close(self) -> None:
        """Stop the batching task (the app's shutdown); waiting requests get an error."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()

    def _expected(self, now: float) -> int:
        """How many items the next batch should wait for: those pending, plus the callers the
        last batch answered that have not sent their next request yet (a client answered
        sends again within milliseconds; a batch closed without them would split the clients
        into two halves that take turns, each half a batch)."""
        if now - self._answered_at > RETURN_WINDOW_S:
            self._answered = 0  # they went quiet
        coming_back = max(0, self._answered - self._arrivals)
        return min(self.max_batch, len(self._pending) + coming_back)

    async def _run(self) -> None:
        arrived = self._arrived
        loop = asyncio.get_running_loop()
        while True:
            await arrived.wait()
            now = loop.time()
            expected = self._expected(now)
            soon, later = now + self.wait_s, now + max(self.wait_s, RETURN_WAIT_S)
            while len(self._pending) < self.max_batch:
                left = (later if len(self._pending) < expected else soon) - loop.time()
                if left <= 0:
                    break
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            jobs, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            if not self._pending:
                arrived.clear()
            try:
                await self._answer([job for job in jobs if not job.future.done()])
            except Exception:  # never let the batching task die: log, fail the batch, go on
                log.exception("batch failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("the batch failed"))
            self._answered, self._answered_at, self._arrivals = len(jobs), loop.time(), 0

    async def _answer(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        groups: dict[tuple[Any, ...], list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.decode.key(), []).append(job)
        for group in groups.values():
            try:
                outcomes = await loop.run_in_executor(engine_thread(), self._decode, group)
            except Exception as error:
                if len(group) == 1:
                    _settle(group[0], error=error)
                    continue
                for job in group:  # only the item at fault gets the error
                    try:
                        (outcome,) = await loop.run_in_executor(engine_thread(), self._decode,
                                                                [job])
                    except Exception as alone:
                        _settle(job, error=alone)
                    else:
                        _settle(job, outcome=outcome)
                continue
            for job, outcome in zip(group, outcomes):
                _settle(job, outcome=outcome)

    def _decode(self, jobs: list[_Job]) -> list[Outcome]:
        """One engine call for a group (in a worker thread)."""
        decode = jobs[0].decode
        prompts = [job.prompt for job in jobs]
        self.calls += 1
        self.items += len(jobs)
        seed = decode.seed if decode.seed is not None else random.randrange(2**31)
        return decode.engine.answer(prompts, schema=decode.schema, max_new_tokens=decode.budget,
                                    temperature=decode.temperature, seed=seed)


def _settle(job: _Job, *, outcome: Outcome | None = None, error: Exception | None = None) -> None:
    if job.future.done():  # the client went away
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(outcome)  # type: ignore[arg-type]
