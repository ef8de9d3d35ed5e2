"""The distil decorator in trace mode: the function behaves exactly as undecorated, and every
successful call becomes one whole record line in every sink."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import random
import sys
import threading

import pytest
from pydantic import BaseModel

from localdistil import Instructions, TraceError, TraceWarning, read_records
from localdistil.records import RecordBuilder
from localdistil.spec import FunctionSpec
from localdistil.trace.modes import Blocking, Body, Mode
from localdistil.trace.recorder import Recorder
from localdistil.trace.wrappers import build_wrapper


class Multiply(BaseModel):
    a: int
    b: int
    result: int


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def trace_path(tmp_path):
    return tmp_path / "traces" / "fn.jsonl"


def test_result_is_returned_untouched_and_the_call_recorded(trace_path):
    instructions = Instructions(name="m", path=str(trace_path))
    sentinel = Multiply(a=2, b=3, result=6)

    @instructions.distil
    def fn(a: int, b: int) -> Multiply:
        return sentinel

    assert fn(2, 3) is sentinel
    (record,) = lines(trace_path)
    assert record["localdistil"]["args"] == {"a": 2, "b": 3}
    assert record["localdistil"]["output"] == {"a": 2, "b": 3, "result": 6}
    assert fn.__name__ == "fn" and fn.spec.name == "fn"


def test_a_call_that_raises_propagates_the_same_exception_and_writes_nothing(trace_path):
    instructions = Instructions(path=str(trace_path))
    error = ValueError("boom")

    @instructions.distil
    def fn(a: int) -> Multiply:
        raise error

    with pytest.raises(ValueError) as caught:
        fn(1)
    assert caught.value is error
    assert not trace_path.exists()


def test_wrong_arguments_raise_the_functions_own_type_error(trace_path):
    @Instructions(path=str(trace_path)).distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=0, result=0)

    with pytest.raises(TypeError, match="unexpected keyword argument 'zzz'"):
        fn(zzz=1)
    assert not trace_path.exists()


def test_arguments_are_recorded_as_passed_even_if_the_body_mutates_them(trace_path):
    class Total(BaseModel):
        total: int

    @Instructions(path=str(trace_path)).distil
    def consume(items: list[int]) -> Total:
        total = sum(items)
        items.clear()
        return Total(total=total)

    consume([1, 2, 3])
    assert lines(trace_path)[0]["localdistil"]["args"] == {"items": [1, 2, 3]}


class FailingHandler(logging.Handler):
    def handle(self, record):  # bypasses logging's own error handling on purpose
        raise OSError("bucket unreachable")


def test_a_failing_sink_warns_and_never_breaks_the_caller(trace_path):
    instructions = Instructions(path=str(trace_path), log_handlers=[FailingHandler()])

    @instructions.distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=1, result=a)

    with pytest.warns(TraceWarning, match="bucket unreachable") as caught:
        assert fn(4).result == 4
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert len(lines(trace_path)) == 1  # the healthy sink still got the record


def test_strict_raises_trace_error_instead(trace_path):
    @Instructions(log_handlers=[FailingHandler()], strict=True).distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=1, result=a)

    with pytest.raises(TraceError, match="bucket unreachable"):
        fn(4)


def test_a_result_of_the_wrong_type_is_returned_and_reported(trace_path):
    @Instructions(path=str(trace_path)).distil
    def fn(a: int) -> Multiply:
        return {"unexpected": a}  # type: ignore[return-value]

    with pytest.warns(TraceWarning, match="returned dict, not the declared Multiply"):
        assert fn(1) == {"unexpected": 1}
    assert not trace_path.exists()


def test_warnings_as_errors_still_do_not_break_the_caller(trace_path):
    import warnings

    @Instructions(log_handlers=[FailingHandler()]).distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=1, result=a)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fn(2).result == 2


def test_handlers_sit_on_a_private_logger_unaffected_by_app_logging(tmp_path, caplog):
    out = tmp_path / "h.jsonl"
    handler = logging.FileHandler(out)
    instructions = Instructions(name="three_digit_multiply", log_handlers=[handler])
    root_handlers = list(logging.getLogger().handlers)

    @instructions.distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=1, result=a)

    logging.getLogger().setLevel(logging.CRITICAL)
    logging.disable(logging.CRITICAL)
    try:
        with caplog.at_level(logging.DEBUG):
            fn(1)
    finally:
        logging.disable(logging.NOTSET)
        logging.getLogger().setLevel(logging.WARNING)
    handler.close()
    assert len(lines(out)) == 1
    assert caplog.records == []  # nothing propagated to the root logger
    assert logging.getLogger().handlers == root_handlers
    assert "three_digit_multiply" not in logging.Logger.manager.loggerDict


def test_two_instructions_with_the_same_name_do_not_duplicate_records(tmp_path):
    out = tmp_path / "h.jsonl"
    handler = logging.FileHandler(out)
    first = Instructions(name="same", log_handlers=[handler])
    second = Instructions(name="same", log_handlers=[handler])

    @second.distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=1, result=a)

    fn(1)
    handler.close()
    assert len(lines(out)) == 1
    assert first.sinks[0].logger is not second.sinks[0].logger


def test_log_handlers_must_be_handlers():
    with pytest.raises(TypeError, match="logging.FileHandler"):
        Instructions(log_handlers=["traces.jsonl"])  # type: ignore[list-item]


def test_sampling_records_a_fraction_of_calls(trace_path):
    @Instructions(path=str(trace_path), sample_rate=0.25, seed=0).distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=1, result=a)

    for i in range(400):
        fn(i)
    assert 60 < len(lines(trace_path)) < 140
    with pytest.raises(ValueError, match="sample_rate"):
        Instructions(sample_rate=1.5)


def test_sampling_leaves_the_callers_random_state_alone_and_a_seed_repeats_it(tmp_path):
    random.seed(1234)
    before = random.getstate()
    recorded = []
    for run in range(2):
        path = tmp_path / f"run{run}.jsonl"

        @Instructions(path=str(path), sample_rate=0.5, seed=7).distil
        def fn(a: int) -> Multiply:
            return Multiply(a=a, b=1, result=a)

        for i in range(50):
            fn(i)
        recorded.append([r["localdistil"]["args"]["a"] for r in lines(path)])
    assert random.getstate() == before
    assert recorded[0] == recorded[1] and 0 < len(recorded[0]) < 50


def test_redact_changes_or_drops_records(trace_path):
    def redact(record):
        if record["localdistil"]["args"]["a"] < 0:
            return None
        record["localdistil"]["extra"] = {"redacted": True}
        return record

    @Instructions(path=str(trace_path), redact=redact).distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=1, result=a)

    fn(-1)
    fn(2)
    (record,) = lines(trace_path)
    block = record["localdistil"]
    assert block["args"] == {"a": 2} and block["extra"] == {"redacted": True}


def test_extra_metadata_and_instructions_id_are_in_every_record(trace_path):
    @Instructions(path=str(trace_path), id="run-7", extra={"team": "search"}).distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=1, result=a)

    fn(1)
    block = lines(trace_path)[0]["localdistil"]
    assert block["extra"] == {"team": "search"} and block["instructions_id"] == "run-7"


def test_async_functions_are_traced_without_blocking(trace_path):
    instructions = Instructions(path=str(trace_path))

    @instructions.distil
    async def fn(a: int, b: int) -> Multiply:
        await asyncio.sleep(0.01)
        return Multiply(a=a, b=b, result=a * b)

    async def main():
        return await asyncio.gather(*(fn(i, 2) for i in range(10)))

    results = asyncio.run(main())
    assert [r.result for r in results] == [i * 2 for i in range(10)]
    assert sorted(r["localdistil"]["args"]["a"] for r in lines(trace_path)) == list(range(10))
    assert asyncio.iscoroutinefunction(fn)


class Probe(Mode):
    """Runs the body, then some model work; a ValueError from the body is caught here."""

    def call(self, args, kwargs):
        try:
            result = yield Body(args, kwargs)
        except ValueError:
            return "handled by the mode"
        worker = yield Blocking(threading.get_ident)
        return result, worker

    def entry_points(self):
        return {"twice": lambda *calls: self._twice(calls)}

    def _twice(self, calls):
        results = []
        for args in calls:
            results.append((yield from self.call(args, {})))
        return results


def _probe(fn):
    spec = FunctionSpec.from_function(fn)
    return build_wrapper(fn, Probe(Recorder(Instructions(), RecordBuilder(spec))))


def test_one_mode_makes_the_sync_and_the_async_function():
    def sync(a: int) -> Multiply:
        if a < 0:
            raise ValueError(a)
        return Multiply(a=a, b=1, result=a)

    async def run_async(a: int) -> Multiply:
        await asyncio.sleep(0)
        return sync(a)

    wrapped = _probe(sync)
    assert wrapped(2) == (Multiply(a=2, b=1, result=2), threading.get_ident())
    assert wrapped(-1) == "handled by the mode"
    assert [r[0].a for r in wrapped.twice((1,), (2,))] == [1, 2]
    assert wrapped.spec.name == "sync" and not asyncio.iscoroutinefunction(wrapped)

    awrapped = _probe(run_async)
    assert asyncio.iscoroutinefunction(awrapped) and asyncio.iscoroutinefunction(awrapped.twice)

    async def main():
        return await awrapped(3), await awrapped(-1), threading.get_ident()

    (result, worker), handled, loop_thread = asyncio.run(main())
    assert result.a == 3 and handled == "handled by the mode"
    assert worker != loop_thread  # model work ran in a thread, off the event loop


def test_methods_and_classmethods(trace_path):
    instructions = Instructions(path=str(trace_path))

    class Calculator:
        offset = 10

        @instructions.distil
        def mul(self, a: int, b: int) -> Multiply:
            return Multiply(a=a, b=b, result=a * b + self.offset)

        @classmethod
        @instructions.distil
        def make(cls, a: int) -> Multiply:
            return Multiply(a=a, b=0, result=cls.offset)

    assert Calculator().mul(2, b=3).result == 16
    assert Calculator.make(1).result == 10
    records = lines(trace_path)
    assert [r["localdistil"]["args"] for r in records] == [{"a": 2, "b": 3}, {"a": 1}]
    assert "self" not in records[0]["messages"][0]["content"]


def test_include_code_body_puts_the_source_in_the_system_prompt(trace_path):
    @Instructions(path=str(trace_path), include_code_body=True).distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=2, result=a * 2)

    fn(1)
    system = lines(trace_path)[0]["messages"][0]["content"]
    assert "return Multiply(a=a, b=2, result=a * 2)" in system and "@Instructions" not in system


def test_many_threads_write_whole_lines(trace_path):
    instructions = Instructions(path=str(trace_path))

    @instructions.distil
    def fn(a: int, text: str) -> Multiply:
        return Multiply(a=a, b=len(text), result=a)

    big = "x" * 70_000  # larger than a pipe buffer: one write must still be one line

    def work(t):
        for i in range(50):
            fn(t * 1000 + i, big)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = lines(trace_path)
    assert len(records) == 400
    assert len({r["localdistil"]["args"]["a"] for r in records}) == 400


def _trace_in_process(path: str, worker: int) -> None:
    instructions = Instructions(name="proc", path=path)

    @instructions.distil
    def fn(a: int, text: str) -> Multiply:
        return Multiply(a=a, b=len(text), result=a)

    def work(t):
        for i in range(100):
            fn(worker * 10_000 + t * 1000 + i, "y" * (i * 97))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_four_processes_times_four_threads_into_one_file(trace_path, start_method):
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{start_method} is not available on {sys.platform}")
    context = multiprocessing.get_context(start_method)
    processes = [context.Process(target=_trace_in_process, args=(str(trace_path), w))
                 for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0
    raw = trace_path.read_bytes()
    assert raw.endswith(b"\n")
    records = lines(trace_path)
    assert len(records) == 4 * 4 * 100
    assert len({r["localdistil"]["args"]["a"] for r in records}) == 1600
    assert read_records(trace_path, strict=True).problems == []


def test_fork_after_writing_reopens_the_file(trace_path):
    instructions = Instructions(path=str(trace_path))

    @instructions.distil
    def fn(a: int) -> Multiply:
        return Multiply(a=a, b=1, result=a)

    fn(0)
    parent_fd = instructions.sinks[0]._fd
    context = multiprocessing.get_context("fork")
    child = context.Process(target=fn, args=(1,))
    child.start()
    child.join()
    fn(2)
    assert instructions.sinks[0]._fd == parent_fd
    assert sorted(r["localdistil"]["args"]["a"] for r in lines(trace_path)) == [0, 1, 2]
