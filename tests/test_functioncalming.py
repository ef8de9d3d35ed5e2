"""The real functioncalming client (from PyPI) against `localdistil serve`, answering from a tool
set trained here on the tools of functioncalming's README.

functioncalming needs Python >= 3.12 and the project runs on 3.11, so the client runs as its own
process from ``.venv-clients`` (``make clients``, which ``make test`` runs) or from
``$LOCALDISTIL_CLIENT_PYTHON``; the test skips, saying so, where neither exists. The tool set is
traced through ``Toolset(mode="trace")`` and trained by ``train`` on the embedded SmolLM2 (the tiny
random model writes one string until its budget runs out, which the client rightly refuses), so
the answers are the right calls, not only valid ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serving import running

sys.path.insert(0, str(Path(__file__).parent / "clients"))

from fc_tools import TOOLS, EmojiTranslation, Situation  # noqa: E402

from localdistil import Toolset  # noqa: E402

CLIENT = Path(__file__).parent / "clients" / "functioncalming_client.py"
API_KEY = "sk-test-functioncalming"
CITIES = ["Paris", "Oslo", "Lima", "Riga", "Bern", "Kyiv"]


def _client_python() -> str:
    configured = os.environ.get("LOCALDISTIL_CLIENT_PYTHON")
    if configured:
        return configured
    venv = Path(__file__).parents[1] / ".venv-clients" / "bin" / "python"
    if venv.exists():
        return str(venv)
    try:
        import functioncalming  # noqa: F401  (a dev environment on Python >= 3.12 has it)
    except ImportError:
        pytest.skip("functioncalming needs Python >= 3.12: run `make clients` (it finds one on "
                    "PATH or under pyenv) or set LOCALDISTIL_CLIENT_PYTHON")
    return sys.executable


def teacher(messages):
    """What a hosted model answers: an emoji translation when asked for one, else the weather
    for each city named, else the situation told."""
    text = messages[-1]["content"]
    if text.startswith("say in emojis"):
        return [{"name": "EmojiTranslation", "arguments": {"translation": "🌧️🙂"}}]
    cities = [city for city in CITIES if city in text]
    if cities:
        return [{"name": "get_weather", "arguments": {"city": city}} for city in cities]
    return [{"name": "Situation", "arguments": {
        "actors": [{"name": text.split()[0], "adjectives": ["tired"]}], "action": "sleeps"}}]


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    from localdistil.serve import create_app, load_served
    from localdistil.training.recipe import parse_recipe
    from localdistil.training.train import train

    root = tmp_path_factory.mktemp("functioncalming")
    traces = root / "traces.jsonl"
    toolset = Toolset("calm", TOOLS, teacher=teacher, path=traces, max_calls=3)
    messages = ([f"weather in {c}?" for c in CITIES] + ["weather in Paris and Oslo?"]
                + [f"say in emojis: {c} is rainy" for c in CITIES]
                + [f"{n} is tired and sleeps" for n in ("Ann", "Bob", "Eve", "Max", "Sam", "Ida")])
    for message in messages:
        toolset.complete(message, mode="trace")
    toolset.close()
    run = root / "run"
    train(parse_recipe({
        "model": str(smollm2_path), "data": {"train": [str(traces)], "eval_fraction": 0},
        "train": {"max_steps": 12, "batch_size": 4, "learning_rate": 2e-3, "warmup_ratio": 0,
                  "eval_samples": 0, "patience": None},  # the client's answers are the test
        "gate": {"min_exact": 0.0, "min_valid": 0.0}, "output": {"dir": str(run)}}))
    app = create_app(load_served([str(run)]), api_key=API_KEY, max_batch=4, batch_wait_ms=5)
    with running(app) as url:
        yield url


@pytest.mark.slow
def test_functioncalming_gets_successful_calls_from_the_local_server(server):
    messages = ["What's the weather like in Lima?", "say in emojis: Bern is rainy",
                "Eve is tired and sleeps"]
    done = subprocess.run([_client_python(), str(CLIENT), f"{server}/v1", API_KEY, "calm",
                           *messages], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(messages)
    for answer in answers:
        assert answer["success"], answer["error"]
        assert answer["error"] is None and answer["retries_done"] == 0
        assert answer["assistant_messages"] == 1  # the clean history: one assistant turn
    weather, emojis, situation = ([(r["type"], r["value"]) for r in a["results"]] for a in answers)
    assert weather == [("str", "Sunny, 22 C in Lima, US")]  # the function tool ran in the client
    ((kind, value),) = emojis
    assert kind == "EmojiTranslation" and EmojiTranslation.model_validate(value).translation
    ((kind, value),) = situation
    assert kind == "Situation" and Situation.model_validate(value).actors[0].name == "Eve"
