"""mode="auto" on the tiny model: trace until an adapter exists, shadow until the model agrees
often enough, dispatch while monitoring, back to shadowing on drift, untrusted again for a new
version; the function's exceptions untouched in every phase; threads, processes and async.

The adapter is written by hand (PEFT on the tiny model, a manifest from the function's spec; no
training), so the model's answers are noise, but deterministic (greedy). The module fixture asks
the model once for each ticket below; the function then agrees with the model by returning
exactly those answers, and disagrees by flipping ``urgent``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from localdistil import (
    AutoFunction,
    DecorationError,
    FunctionSpec,
    Instructions,
    TraceWarning,
)
from localdistil.trace import auto, auto_state
from localdistil.trace.auto_state import AutoPolicy

TICKETS = [f"ticket {n}" for n in range(8)]


class Flags(BaseModel):
    urgent: bool = False
    kind: Literal["bug", "question"] = "bug"


class Boom(Exception):
    """The function's own exception: it must reach the caller as it is."""


class Behaviour:
    """What ``triage`` answers: the model's answer (or its opposite once ``drift`` is set), the
    calls of its body, and :class:`Boom` for the ticket ``"boom"``."""

    def __init__(self, answers: dict[str, dict]):
        self.answers = answers
        self.drift = False
        self.calls: list[str] = []
        self.boom = Boom("the function's own error")
        self._lock = threading.Lock()

    def __call__(self, text: str) -> Flags:
        with self._lock:
            self.calls.append(text)
        if text == "boom":
            raise self.boom
        answer = Flags(**self.answers[text])
        return Flags(urgent=not answer.urgent, kind=answer.kind) if self.drift else answer


def _triage(behaviour):
    def triage(text: str) -> Flags:
        """Triage a ticket."""
        return behaviour(text)

    return triage


def _atriage(behaviour):
    async def triage(text: str) -> Flags:
        """Triage a ticket."""
        await asyncio.sleep(0)
        return behaviour(text)

    return triage


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """``(adapter directory, {ticket: the model's answer})``: an untrained LoRA adapter on the
    tiny model with the manifest of ``triage``, and what it answers for each ticket."""
    from peft import LoraConfig, get_peft_model

    from localdistil.inference.dispatch import Dispatcher
    from localdistil.models.adapter import Manifest, tokenizer_hash, write_manifest
    from localdistil.models.resolve import load_causal_lm, load_tokenizer, model_content_hash
    from localdistil.prompts import PROMPT_VERSION

    directory = tmp_path_factory.mktemp("auto") / "adapter"
    tokenizer = load_tokenizer(tiny_model_dir)
    model = get_peft_model(load_causal_lm(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    spec = FunctionSpec.from_function(_triage(None))
    write_manifest(directory, Manifest(
        base_model=str(tiny_model_dir), base_model_path=str(tiny_model_dir),
        base_model_hash=model_content_hash(tiny_model_dir),
        tokenizer_hash=tokenizer_hash(tokenizer), function=spec.qualname, name=spec.name,
        signature=spec.signature, doc=spec.doc, fingerprint=spec.fingerprint,
        output_schema=spec.output_schema, schema_hash=spec.schema_hash,
        prompt_style="compact", prompt_version=PROMPT_VERSION, max_output_tokens=24, recipe={}))
    dispatcher = Dispatcher(spec, directory)
    answers = {text: dispatcher.answer({"text": text}).model_dump() for text in TICKETS}
    return directory, answers


@pytest.fixture
def run(trained, tmp_path):
    """A run directory of this test's own (its ``auto/`` state apart from other tests') whose
    ``adapter/`` is the module's adapter (linked: the model loads once per module)."""
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "adapter").symlink_to(trained[0], target_is_directory=True)
    return directory


@pytest.fixture
def behaviour(trained):
    return Behaviour(trained[1])


@pytest.fixture(autouse=True)
def look_at_every_call(monkeypatch):
    """Look for the promoted version and re-read the state file at every call."""
    monkeypatch.setattr(auto, "VERSION_CHECK_S", 0.0)
    monkeypatch.setattr(auto_state, "REFRESH_S", 0.0)


def _auto(run, fn, traces=None, **options) -> AutoFunction:
    policy = {"promote_at": 0.9, "demote_at": 0.8, "window": 8, "min_calls": 4,
              "monitor_rate": 0.0, **options}
    instructions = Instructions(path=None if traces is None else str(traces), seed=0)
    return instructions.distil(model=str(run), mode="auto", **policy)(fn)


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line)["localdistil"] for line in path.read_text().splitlines()]


# -- the arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "named"), [
    ({"promote_at": 1.2}, "promote_at"),
    ({"demote_at": -0.1}, "demote_at"),
    ({"promote_at": 0.8, "demote_at": 0.8}, "demote_at"),
    ({"window": 10, "min_calls": 20}, "min_calls"),
    ({"min_calls": 0}, "min_calls"),
    ({"window": 2.5}, "window"),
    ({"monitor_rate": 1.5}, "monitor_rate"),
    ({"monitor_rate": "often"}, "monitor_rate"),
])
def test_thresholds_out_of_range_are_refused_naming_the_argument(tmp_path, options, named):
    with pytest.raises(DecorationError, match=rf"^{named}\b"):
        Instructions().distil(model=str(tmp_path / "run"), mode="auto", **options)


def test_the_extremes_are_accepted_and_dispatch_options_checked_at_decoration(tmp_path):
    assert AutoPolicy(promote_at=1.0, demote_at=0.0, window=1, min_calls=1, monitor_rate=1.0)
    with pytest.raises(DecorationError, match="on_invalid"):
        Instructions().distil(model=str(tmp_path / "run"), mode="auto",
                              on_invalid="ignore")(_triage(None))


# -- trace, shadow, dispatch ---------------------------------------------------------------------


def test_without_an_adapter_calls_are_traced_and_nothing_heavy_is_imported(tmp_path):
    traces = tmp_path / "traces.jsonl"
    code = (
        "import json, sys\n"
        "from typing import Literal\n"
        "from pydantic import BaseModel\n"
        "from localdistil import Instructions\n"
        "class Flags(BaseModel):\n    urgent: bool = False\n"
        "@Instructions(path=sys.argv[1]).distil(model=sys.argv[2], mode='auto')\n"
        "def triage(text: str) -> Flags:\n    return Flags(urgent=text == 'now')\n"
        "results = [triage('now').urgent, triage('later').urgent]\n"
        "heavy = {'torch', 'transformers', 'trl', 'peft', 'datasets', 'outlines', 'accelerate'}\n"
        "print(json.dumps({'results': results, 'stats': triage.router_stats.summary(),\n"
        "                  'heavy': sorted(heavy & set(sys.modules))}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(traces), str(tmp_path / "run")],
                            capture_output=True, text=True, check=True, timeout=120)
    out = json.loads(result.stdout)
    assert out["heavy"] == [] and out["results"] == [True, False]
    assert out["stats"]["phase"] == "trace" and out["stats"]["version"] is None
    records = _records(traces)
    assert [r["args"] for r in records] == [{"text": "now"}, {"text": "later"}]
    assert all("shadow" not in r for r in records)
    assert not (tmp_path / "run").exists()  # no state without an adapter


def test_an_adapter_is_shadowed_until_trusted_then_answers(tmp_path, behaviour, trained):
    run = tmp_path / "run"
    traces = tmp_path / "traces.jsonl"
    fn = _auto(run, _triage(behaviour), traces)
    assert fn(TICKETS[0]) == Flags(**behaviour.answers[TICKETS[0]])  # no adapter yet: traced
    assert fn.router_stats.phase == "trace" and _records(traces)[0].get("shadow") is None

    # the adapter appears while the service runs: picked up without a restart
    run.mkdir()
    (run / "adapter").symlink_to(trained[0], target_is_directory=True)
    for text in TICKETS[:3]:
        assert fn(text) == Flags(**behaviour.answers[text])
    stats = fn.router_stats.summary()
    assert stats["phase"] == "shadow" and stats["version"].startswith("adapter-")
    assert stats["compared"] == 3 and stats["window"] == 3 and stats["agreement"] == 1.0
    assert [r["shadow"]["exact"] for r in _records(traces)[1:]] == [True] * 3

    fn(TICKETS[3])  # the 4th agreeing comparison: min_calls reached at 100 % >= promote_at
    assert fn.router_stats.phase == "dispatch"
    state = json.loads((run / "auto" / "triage.json").read_text())
    assert state["phase"] == "dispatch" and state["compared"] == 4 and state["promotions"] == 1

    behaviour.calls.clear()
    assert [fn(text) for text in TICKETS] == [Flags(**behaviour.answers[t]) for t in TICKETS]
    assert behaviour.calls == []  # monitor_rate=0: the model alone answers
    assert len(_records(traces)) == 5  # answers of the model are not training examples
    assert fn.router_stats.compared == 4


def test_a_trusted_model_is_monitored_and_handed_back_on_drift(run, behaviour, tmp_path):
    traces = tmp_path / "traces.jsonl"
    fn = _auto(run, _triage(behaviour), traces, monitor_rate=1.0)
    for text in TICKETS[:4]:
        fn(text)
    assert fn.router_stats.phase == "dispatch"

    behaviour.drift = True  # the function changes its mind; the model does not
    behaviour.calls.clear()
    first = fn(TICKETS[4])
    assert first.urgent != behaviour.answers[TICKETS[4]]["urgent"]  # the function's answer
    stats = fn.router_stats.summary()
    assert stats["phase"] == "dispatch" and stats["agreement"] == 4 / 5  # not below demote_at
    fn(TICKETS[5])
    stats = fn.router_stats.summary()
    assert stats["phase"] == "shadow" and stats["agreement"] == 4 / 6 and stats["demotions"] == 1
    assert behaviour.calls == TICKETS[4:6]  # monitored: the function ran on both

    disagreeing = [r for r in _records(traces) if not r["shadow"]["exact"]]
    assert [r["args"]["text"] for r in disagreeing] == TICKETS[4:6]
    assert all(r["output"]["urgent"] != r["shadow"]["model_output"]["urgent"] for r in disagreeing)

    for text in TICKETS[6:8]:  # shadowing again: the function answers and is recorded
        assert fn(text).urgent != behaviour.answers[text]["urgent"]
    assert fn.router_stats.phase == "shadow"
    assert len(_records(traces)) == 8


def test_a_new_version_starts_untrusted(run, behaviour, monkeypatch):
    promoted = ["v0001"]
    monkeypatch.setattr(auto, "_current_version", lambda path: promoted[0])
    fn = _auto(run, _triage(behaviour))
    for text in TICKETS[:4]:
        fn(text)
    assert (fn.router_stats.phase, fn.router_stats.version) == ("dispatch", "v0001")

    promoted[0] = "v0002"  # retrained and promoted
    behaviour.calls.clear()
    fn(TICKETS[4])
    assert behaviour.calls == [TICKETS[4]]  # shadowed, not dispatched
    stats = fn.router_stats.summary()
    assert (stats["phase"], stats["version"], stats["compared"]) == ("shadow", "v0002", 1)
    assert json.loads((run / "auto" / "triage.json").read_text())["version"] == "v0002"

    promoted[0] = "v0001"  # rolled back: a change of version too
    fn(TICKETS[5])
    assert (fn.router_stats.phase, fn.router_stats.compared) == ("shadow", 1)

    promoted[0] = None  # nothing promoted any more: traced
    assert fn(TICKETS[6]) == Flags(**behaviour.answers[TICKETS[6]])
    assert (fn.router_stats.phase, fn.router_stats.version) == ("trace", None)


def test_promoting_and_rolling_back_versions_of_a_run_starts_untrusted(trained, behaviour,
                                                                        tmp_path):
    versions = pytest.importorskip("localdistil.models.versions")
    run = tmp_path / "run"
    for name in ("v0001", "v0002"):
        (run / "versions").mkdir(parents=True, exist_ok=True)
        (run / "versions" / name).symlink_to(trained[0], target_is_directory=True)
    fn = _auto(run, _triage(behaviour))
    fn(TICKETS[0])
    assert fn.router_stats.phase == "trace"  # versions, none promoted: nothing answers yet

    versions.promote(run, "v0001")
    for text in TICKETS[:4]:
        fn(text)
    assert (fn.router_stats.phase, fn.router_stats.version) == ("dispatch", "v0001")

    versions.promote(run, "v0002")
    fn(TICKETS[4])
    assert (fn.router_stats.phase, fn.router_stats.version) == ("shadow", "v0002")
    assert fn.router_stats.compared == 1

    assert versions.rollback(run) == "v0001"
    fn(TICKETS[5])
    stats = fn.router_stats.summary()
    assert (stats["phase"], stats["version"], stats["compared"]) == ("shadow", "v0001", 1)


def test_the_version_of_a_run_without_versions_follows_its_adapter(trained, tmp_path):
    assert auto._current_version(tmp_path / "missing") is None
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    assert auto._current_version(run) is None  # not a complete adapter
    for item in trained[0].iterdir():
        (run / "adapter" / item.name).write_bytes(item.read_bytes())
    version = auto._current_version(run)
    assert version is not None and version == auto._current_version(run)
    manifest = run / "adapter" / "localdistil.json"
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # trained again in place
    assert auto._current_version(run) not in (None, version)


def test_the_state_survives_a_restart_and_a_removed_or_broken_file_means_untrusted(run, behaviour):
    fn = _auto(run, _triage(behaviour))
    for text in TICKETS[:4]:
        fn(text)
    restarted = _auto(run, _triage(behaviour))  # another decoration: reads the file
    assert restarted.router_stats.phase == "dispatch"

    state = run / "auto" / "triage.json"
    state.unlink()
    assert (fn.router_stats.phase, fn.router_stats.compared) == ("shadow", 0)

    state.write_text("{not json")
    with pytest.warns(TraceWarning, match="triage.json is unreadable"):
        phase = _auto(run, _triage(behaviour)).router_stats.phase
    assert phase == "shadow"
    assert json.loads(state.read_text())["phase"] == "shadow"  # written whole again


def test_the_functions_exceptions_pass_through_in_every_phase(run, behaviour, tmp_path):
    traced = _auto(tmp_path / "nothing-here", _triage(behaviour))
    with pytest.raises(Boom) as caught:
        traced("boom")
    assert caught.value is behaviour.boom and traced.router_stats.phase == "trace"

    fn = _auto(run, _triage(behaviour))
    with pytest.raises(Boom) as caught:
        fn("boom")
    assert caught.value is behaviour.boom and fn.router_stats.summary()["compared"] == 0
    for text in TICKETS[:4]:
        fn(text)
    assert fn.router_stats.phase == "dispatch"

    monitored = _auto(run, _triage(behaviour), monitor_rate=1.0)  # the same state: trusted
    assert monitored.router_stats.phase == "dispatch"
    with pytest.raises(Boom) as caught:
        monitored("boom")
    assert caught.value is behaviour.boom

    # the model cannot answer (out of tokens): the function answers that call, and raises
    starved = _auto(run, _triage(behaviour), max_new_tokens=1)
    with pytest.raises(Boom) as caught:
        starved("boom")
    assert caught.value is behaviour.boom
    assert fn.router_stats.phase == "dispatch"  # no comparison was made


def test_a_model_without_an_answer_falls_back_to_the_function(run, behaviour, tmp_path):
    fn = _auto(run, _triage(behaviour))
    for text in TICKETS[:4]:
        fn(text)
    assert fn.router_stats.phase == "dispatch"

    traces = tmp_path / "fallback.jsonl"
    starved = _auto(run, _triage(behaviour), traces, max_new_tokens=1)  # out of tokens, always
    behaviour.calls.clear()
    assert starved(TICKETS[4]) == Flags(**behaviour.answers[TICKETS[4]])
    assert behaviour.calls == [TICKETS[4]]
    (record,) = _records(traces)  # a new training example
    assert record["args"] == {"text": TICKETS[4]} and "shadow" not in record
    assert starved.router_stats.compared == 4  # not a comparison: not counted

    monitored = _auto(run, _triage(behaviour), traces, max_new_tokens=1, monitor_rate=1.0)
    monitored(TICKETS[5])
    stats = monitored.router_stats.summary()
    assert stats["compared"] == 5 and stats["agreement"] == 4 / 5  # a disagreement
    shadow = _records(traces)[-1]["shadow"]
    assert shadow["exact"] is False and "ran out of tokens" in shadow["error"]


# -- threads, processes, async -------------------------------------------------------------------


def test_threads_share_the_state_and_every_comparison_is_counted_once(run, behaviour, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(auto_state, "FLUSH_EVERY", 1)  # every comparison through the file
    traces = tmp_path / "traces.jsonl"
    fn = _auto(run, _triage(behaviour), traces, window=40, min_calls=24, promote_at=0.95)
    results: dict[tuple[int, int], Flags] = {}

    def work(worker: int) -> None:
        for n in range(8):
            results[worker, n] = fn(TICKETS[(worker + n) % len(TICKETS)])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(result == Flags(**behaviour.answers[TICKETS[(w + n) % len(TICKETS)]])
               for (w, n), result in results.items()) and len(results) == 32

    stats = fn.router_stats.summary()
    assert stats["phase"] == "dispatch" and stats["agreement"] == 1.0
    # every body run was compared (monitor_rate=0 once trusted), and counted exactly once
    assert stats["compared"] == len(behaviour.calls) >= 24
    state = json.loads((run / "auto" / "triage.json").read_text())
    assert state["compared"] == state["agreed"] == stats["compared"]
    assert len(_records(traces)) == stats["compared"]


def test_async_functions_move_through_the_phases_without_blocking(run, behaviour):
    fn = _auto(run, _atriage(behaviour), monitor_rate=0.0)

    async def main():
        with pytest.raises(Boom):
            await fn("boom")
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        first = await asyncio.gather(*(fn(text) for text in TICKETS[:4]))  # the model answers too
        done.set()
        await task
        phase = fn.router_stats.phase
        behaviour.calls.clear()
        second = await asyncio.gather(*(fn(text) for text in TICKETS))
        return first, ticks, phase, second

    first, ticks, phase, second = asyncio.run(main())
    assert ticks > 10  # the loop ran while the model worked
    assert first == [Flags(**behaviour.answers[t]) for t in TICKETS[:4]]
    assert phase == "dispatch" and behaviour.calls == []
    assert second == [Flags(**behaviour.answers[t]) for t in TICKETS]


_OTHER_PROCESS = """
import json, sys, time
from typing import Literal
from pydantic import BaseModel
from localdistil import Instructions
from localdistil.trace import auto, auto_state

auto.VERSION_CHECK_S = auto_state.REFRESH_S = 0.0
auto_state.FLUSH_EVERY = 1
run, answers = sys.argv[1], json.loads(sys.argv[2])

class Flags(BaseModel):
    urgent: bool = False
    kind: Literal["bug", "question"] = "bug"

@Instructions().distil(model=run, mode="auto", promote_at=0.9, demote_at=0.8, window=8,
                       min_calls=6, monitor_rate=0.0)
def triage(text: str) -> Flags:
    \"\"\"Triage a ticket.\"\"\"
    return Flags(**answers[text])

for text in list(answers)[:3]:
    triage(text)
print(json.dumps(triage.router_stats.summary()), flush=True)
deadline = time.monotonic() + 60
while triage.router_stats.phase != "shadow" and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps(triage.router_stats.summary()), flush=True)
"""


@pytest.mark.slow
def test_two_processes_share_the_counts_and_see_each_others_phase_changes(run, behaviour,
                                                                          monkeypatch):
    monkeypatch.setattr(auto_state, "FLUSH_EVERY", 1)
    fn = _auto(run, _triage(behaviour), min_calls=6, monitor_rate=1.0)
    for text in TICKETS[3:6]:  # 3 comparisons here, 3 there: neither reaches min_calls alone
        fn(text)
    assert fn.router_stats.summary()["phase"] == "shadow"

    with subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, str(run),
                           json.dumps(behaviour.answers)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as other:
        try:
            there = json.loads(other.stdout.readline() or "null")
            assert there is not None, other.stderr.read()
            assert (there["phase"], there["compared"]) == ("dispatch", 6)  # promoted there
            stats = fn.router_stats.summary()
            assert (stats["phase"], stats["compared"], stats["promotions"]) == ("dispatch", 6, 1)

            behaviour.drift = True  # demoted here ...
            deadline = time.monotonic() + 60
            while fn.router_stats.phase == "dispatch" and time.monotonic() < deadline:
                fn(TICKETS[0])
            assert fn.router_stats.phase == "shadow"
            there = json.loads(other.stdout.readline() or "null")  # ... and seen there
            assert there is not None and there["phase"] == "shadow" and there["demotions"] == 1
            assert other.wait(timeout=60) == 0
        finally:
            if other.poll() is None:
                other.kill()
