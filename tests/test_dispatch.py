"""Dispatch and shadow modes on a tiny trained adapter: valid objects, the same prompt tokens as
training, mismatch detection, token budgets, retry and fallback, batches, threads and async."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from typing import Literal

import pytest
from pydantic import BaseModel, Field, field_validator, model_validator

from localdistil import (
    AdapterError,
    AdapterMismatchError,
    DecorationError,
    DispatchError,
    Instructions,
)
from localdistil.inference.engine import Engine
from localdistil.models.resolve import load_tokenizer
from localdistil.training.dataset import build_dataset, select_records
from localdistil.training.recipe import parse_recipe
from localdistil.training.train import train


class Verdict(BaseModel):
    label: Literal["even", "odd"]
    big: bool


def parity(n: int) -> Verdict:
    """Say whether n is even and whether it is over 50."""
    return Verdict(label="even" if n % 2 == 0 else "odd", big=n > 50)


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """A tiny adapter trained briefly on traced calls of ``parity`` (built once per module)."""
    root = tmp_path_factory.mktemp("dispatch")
    traces = root / "parity.jsonl"
    traced = Instructions(path=str(traces)).distil(parity)
    for n in range(40):
        traced(n)
    recipe = parse_recipe({
        "model": str(tiny_model_dir),
        "data": {"train": [str(traces)]},
        "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-2, "save_steps": 100},
        "gate": {"min_exact": 0, "min_valid": 0},  # promote it: it is barely trained
        "output": {"dir": str(root / "run"), "plot": False},
    })
    train(recipe)
    return root / "run"


def test_dispatch_returns_valid_objects_without_running_the_body(run_dir):
    calls = []

    def body(n: int) -> Verdict:
        """Say whether n is even and whether it is over 50."""
        calls.append(n)
        return Verdict(label="odd", big=True)

    body.__name__ = body.__qualname__ = "parity"
    fn = Instructions().distil(model=str(run_dir), mode="dispatch")(body)
    answer = fn(7)
    assert isinstance(answer, Verdict) and calls == []
    assert fn.batch([{"n": 1}, (60,), {"n": 61}]) == [fn(1), fn(60), fn(61)]
    assert fn.batch([]) == []


def test_dispatch_prompt_tokens_equal_training_tokens(run_dir, tiny_model_dir):
    loaded = Engine.for_adapter(run_dir)
    recipe = parse_recipe(loaded.manifest.recipe)
    data = build_dataset(select_records(recipe), load_tokenizer(tiny_model_dir), recipe)
    row = data.train[0]
    prompt_length = row["prompt_length"]
    assert loaded.call_prompt(json.loads(row["args"])) == row["input_ids"][:prompt_length]


def test_the_adapter_directory_itself_is_accepted_and_loaded_once(run_dir):
    assert Engine.for_adapter(run_dir / "versions" / "v0001") is Engine.for_adapter(run_dir)


def test_changed_function_raises_adapter_mismatch_saying_what_changed(run_dir):
    def parity(n: int) -> Verdict:
        """A different docstring."""

    changed = "the docstring changed.*on_mismatch='warn'"
    with pytest.raises(AdapterMismatchError, match=changed) as caught:
        Instructions().distil(model=str(run_dir), mode="dispatch")(parity)
    assert set(caught.value.changes) == {"doc"}  # the fingerprint change is explained by it

    class Other(BaseModel):
        label: str

    def parity(n: int) -> Other:  # noqa: F811
        """Say whether n is even and whether it is over 50."""

    changed = r"the return type's JSON schema changed \(Other\)"
    with pytest.raises(AdapterMismatchError, match=changed):
        Instructions().distil(model=str(run_dir), mode="dispatch")(parity)


def test_an_adapter_trained_on_another_prompt_version_is_refused(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(run_dir / "versions" / "v0001", copy)
    manifest = json.loads((copy / "localdistil.json").read_text())
    manifest["prompt_version"] -= 1
    (copy / "localdistil.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterMismatchError, match="trained on prompts of version") as caught:
        Instructions().distil(model=str(copy), mode="dispatch")(parity)
    assert set(caught.value.changes) == {"prompt_version"}


def test_on_mismatch_warn_downgrades_to_a_warning(run_dir):
    def parity(n: int) -> Verdict:
        """Reworded."""

    with pytest.warns(UserWarning, match="docstring changed"):
        fn = Instructions().distil(model=str(run_dir), mode="dispatch", on_mismatch="warn")(parity)
        fn.warmup()  # loading the model checks the adapter again: it may warn again, never raise
    assert isinstance(fn(4), Verdict)


def test_missing_adapter_and_missing_model_argument(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        Instructions().distil(model=str(tmp_path / "nope"), mode="dispatch")(parity)
    with pytest.raises(DecorationError, match="needs model="):
        Instructions().distil(mode="dispatch")(parity)
    with pytest.raises(DecorationError, match="on_invalid must be one of"):
        Instructions().distil(model=str(tmp_path), mode="dispatch", on_invalid="ignore")(parity)


def test_running_out_of_tokens_raises_with_the_partial_output(run_dir):
    fn = Instructions().distil(model=str(run_dir), mode="dispatch", max_new_tokens=3)(parity)
    with pytest.raises(DispatchError, match="ran out of tokens \\(3\\)") as caught:
        fn(2)
    assert caught.value.raw_output.startswith('{"') and caught.value.function == "parity"
    assert caught.value.adapter.endswith("v0001")


class Strict(BaseModel):
    """Verdict with a validator the grammar cannot express."""

    label: Literal["even", "odd"]
    big: bool

    @field_validator("big")
    @classmethod
    def never_small(cls, value: bool) -> bool:
        if not value:
            raise ValueError("must be big")
        return value


def strict_parity(n: int) -> Strict:
    """Say whether n is even and whether it is over 50."""
    return Strict(label="even" if n % 2 == 0 else "odd", big=True)


def _as(fn, name, doc=parity.__doc__):
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


def test_invalid_answers_raise_retry_or_fall_back(run_dir, tmp_path):
    fn = _as(strict_parity, "parity")
    dispatch = _quiet_dispatch(fn, run_dir, on_invalid="raise")
    refused = "fails Strict's validation: big: Value error, must be big"
    with pytest.raises(DispatchError, match=refused) as caught:
        dispatch(3)
    assert json.loads(caught.value.raw_output)["big"] is False

    class Impossible(BaseModel):
        label: Literal["even", "odd"]
        big: bool

        @model_validator(mode="after")
        def reject(self):
            raise ValueError("no answer is ever right")

    def impossible(n: int) -> Impossible:
        """Say whether n is even and whether it is over 50."""

    with pytest.raises(DispatchError, match="answer after 2 retries fails Impossible's validation"):
        _quiet_dispatch(_as(impossible, "parity"), run_dir, on_invalid="retry", retries=2)(3)

    traces = tmp_path / "fallback.jsonl"
    fallback = _quiet_dispatch(fn, run_dir, on_invalid="fallback",
                               instructions=Instructions(path=str(traces)))
    assert fallback(3) == Strict(label="odd", big=True)
    (record,) = [json.loads(line) for line in traces.read_text().splitlines()]
    assert record["localdistil"]["args"] == {"n": 3}  # the fallback call is a new training example
    assert fallback.batch([(5,), {"n": 6}]) == [strict_parity(5), strict_parity(6)]
    assert len(traces.read_text().splitlines()) == 3


def _quiet_dispatch(fn, run_dir, instructions=None, mode="dispatch", **options):
    """``fn`` (another return type than the adapter's) dispatched anyway, warmed up."""
    with pytest.warns(UserWarning, match="JSON schema changed"):
        distil = (instructions or Instructions()).distil
        fn = distil(model=str(run_dir), mode=mode, on_mismatch="warn", **options)(fn)
        fn.dispatcher.warmup()
    return fn


class Loose(BaseModel):
    """Verdict with a free-text label, so that the same model answers at different lengths."""

    label: str = Field(max_length=30)
    big: bool


def loose_parity(n: int) -> Loose:
    """Say whether n is even and whether it is over 50."""
    return Loose(label="even" if n % 2 == 0 else "odd", big=n > 50)


def test_a_batch_returns_every_answer_and_each_failed_calls_error_in_its_place(run_dir):
    calls = [(n,) for n in range(16)]
    engine = Engine.for_adapter(run_dir)
    probe = engine.answer([engine.call_prompt({"n": n}) for (n,) in calls], output_type=Loose,
                          max_new_tokens=64)
    lengths = [outcome.completion_tokens for outcome in probe]
    assert all(outcome.ok for outcome in probe)
    short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
    if lengths[long] - lengths[short] < 2:
        pytest.skip(f"the tiny model answered every call at about one length: {lengths}")
    budget = (lengths[short] + lengths[long]) // 2  # the long answers cannot finish within it

    fn = _quiet_dispatch(_as(loose_parity, "parity"), run_dir, max_new_tokens=budget)
    answers = fn.batch(calls)
    assert len(answers) == len(calls)
    assert isinstance(answers[short], Loose) and isinstance(answers[long], DispatchError)
    for answer in answers:
        if isinstance(answer, DispatchError):
            assert f"ran out of tokens ({budget})" in str(answer)
            assert answer.raw_output.startswith('{"label":"') and answer.function == "parity"
        else:
            assert isinstance(answer, Loose)
    first_error = next(a for a in answers if isinstance(a, DispatchError))
    with pytest.raises(DispatchError, match=r"ran out of tokens") as caught:
        fn.batch(calls, raise_errors=True)  # the first error, once the whole batch is answered
    assert caught.value.raw_output == first_error.raw_output
    with pytest.raises(DispatchError, match=r"ran out of tokens"):
        fn(*calls[long])  # one call raises, as it always did


def test_retry_samples_again_until_valid(run_dir):
    seen = []

    class Flaky(BaseModel):
        label: Literal["even", "odd"]
        big: bool

        @field_validator("label")
        @classmethod
        def reject_first(cls, value: str) -> str:
            seen.append(value)
            if len(seen) == 1:
                raise ValueError("first answer rejected")
            return value

    def parity(n: int) -> Flaky:
        """Say whether n is even and whether it is over 50."""

    with pytest.warns(UserWarning):
        fn = Instructions().distil(model=str(run_dir), mode="dispatch", on_mismatch="warn",
                                   on_invalid="retry")(parity)
        fn.warmup()
    assert isinstance(fn(4), Flaky) and len(seen) == 2


def test_threads_share_one_model_and_get_the_same_answers(run_dir):
    fn = Instructions().distil(model=str(run_dir), mode="dispatch")(parity)
    expected = {n: fn(n) for n in range(8)}
    got: dict[int, Verdict] = {}

    def work(n):
        got[n] = fn(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_async_dispatch_does_not_block_the_event_loop(run_dir):
    async def aparity(n: int) -> Verdict:
        """Say whether n is even and whether it is over 50."""
        raise AssertionError("the body must not run")

    fn = Instructions().distil(model=str(run_dir), mode="dispatch",
                               on_mismatch="warn")(_as(aparity, "parity"))
    fn.warmup()

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        answers = await asyncio.gather(fn(1), fn(2))
        done.set()
        await task
        return answers, ticks, await fn.batch([(3,), {"n": 4}])

    answers, ticks, batch = asyncio.run(main())
    assert all(isinstance(a, Verdict) for a in answers + batch)
    assert ticks > 10


def test_shadow_returns_the_functions_result_and_records_agreement(run_dir, tmp_path):
    traces = tmp_path / "shadow.jsonl"
    fn = Instructions(path=str(traces)).distil(model=str(run_dir), mode="shadow")(parity)
    assert [fn(n) for n in (1, 2, 60)] == [parity(1), parity(2), parity(60)]
    summary = fn.shadow_stats.summary()
    assert summary["calls"] == 3 and set(summary["fields"]) == {"label", "big"}
    records = [json.loads(line)["localdistil"] for line in traces.read_text().splitlines()]
    assert [r["args"]["n"] for r in records] == [1, 2, 60]
    for record in records:
        shadow = record["shadow"]
        assert shadow["exact"] == (shadow["model_output"] == record["output"])
        assert set(shadow["fields"]) == {"label", "big"}
    assert sum(r["shadow"]["exact"] for r in records) == round(summary["exact_match"] * 3)


def test_shadow_rate_zero_never_asks_the_model(run_dir):
    fn = Instructions().distil(model=str(run_dir), mode="shadow", shadow_rate=0.0)(parity)
    assert fn(3) == parity(3) and fn.shadow_stats.summary()["calls"] == 0


def test_shadow_counts_a_model_without_an_answer_as_disagreeing(run_dir, tmp_path):
    traces = tmp_path / "shadow.jsonl"
    fn = Instructions(path=str(traces)).distil(model=str(run_dir), mode="shadow",
                                               max_new_tokens=3)(parity)
    assert fn(1) == parity(1) and fn(60) == parity(60)  # no warning, no error for the caller
    assert fn.shadow_stats.summary()["calls"] == 2 and fn.shadow_stats.summary()["exact_match"] == 0
    for line in traces.read_text().splitlines():
        shadow = json.loads(line)["localdistil"]["shadow"]
        assert shadow["model_output"] is None and "ran out of tokens (3)" in shadow["error"]
        assert shadow["exact"] is False and set(shadow["fields"].values()) == {False}


def test_sampling_and_shadow_sampling_leave_the_callers_random_state_alone(run_dir, tmp_path):
    traces = tmp_path / "shadow.jsonl"
    instructions = Instructions(path=str(traces), sample_rate=0.5, seed=3)
    fn = instructions.distil(model=str(run_dir), mode="shadow", shadow_rate=0.5)(parity)
    random.seed(99)
    before = random.getstate()
    for n in range(24):
        assert fn(n) == parity(n)
    assert random.getstate() == before
    assert 0 < fn.shadow_stats.summary()["calls"] < 24
    assert 0 < len(traces.read_text().splitlines()) < 24
