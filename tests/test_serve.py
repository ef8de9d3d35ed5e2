"""``localdistil serve``: distilled functions behind OpenAI's chat completions API, tested with the
real clients (``openai``, instructor) against a server on 127.0.0.1.

The adapters are written by hand (PEFT on the tiny random model, a manifest from the function's
spec), not trained: a random model still answers valid JSON under the grammar, and these tests
are about the protocol, the prompts and the batching, not about what the model learnt. Every
request loop is bounded in count and time (the clients' ``timeout``, ``max_retries=0``).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import pytest
from pydantic import BaseModel
from serving import running

from localdistil import FunctionSpec, Instructions
from localdistil.inference.engine import Engine
from localdistil.serve.functions import ArgumentError, FunctionParameters, call_prompt

try:  # the openai client's HTTP library (httpx's successor in openai >= 3)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

API_KEY = "test-key"
MAX_PROMPT_TOKENS = 400
TIMEOUT = 60


class Ticket(BaseModel):
    urgent: bool
    kind: Literal["bug", "question", "feature"]


class Flags(BaseModel):
    spam: bool = False
    mood: Literal["calm", "angry"] = "calm"


def triage(title: str, severity: int = 2, labels: list[str] | None = None) -> Ticket:
    """Triage a ticket."""
    return Ticket(urgent=severity > 3, kind="bug")


def classify(text: str) -> Flags:
    """Classify a message."""
    return Flags()


def _manifest(fn, tokenizer, tiny_model_dir):
    """The manifest of an adapter of ``fn`` on the tiny model."""
    from localdistil.models.adapter import Manifest, tokenizer_hash
    from localdistil.models.resolve import model_content_hash
    from localdistil.prompts import PROMPT_VERSION

    spec = FunctionSpec.from_function(fn)
    return Manifest(
        base_model=str(tiny_model_dir), base_model_path=str(tiny_model_dir),
        base_model_hash=model_content_hash(tiny_model_dir),
        tokenizer_hash=tokenizer_hash(tokenizer), function=spec.qualname, name=spec.name,
        signature=spec.signature, doc=spec.doc, fingerprint=spec.fingerprint,
        output_schema=spec.output_schema, schema_hash=spec.schema_hash,
        prompt_style="compact", prompt_version=PROMPT_VERSION, max_output_tokens=16, recipe={})


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """``{"triage": dir, "classify": dir}``: untrained LoRA adapters on the tiny model (the same
    weights) with the manifests of the two functions."""
    from peft import LoraConfig, get_peft_model

    from localdistil.models.adapter import write_manifest
    from localdistil.models.resolve import load_causal_lm, load_tokenizer

    root = tmp_path_factory.mktemp("serve")
    tokenizer = load_tokenizer(tiny_model_dir)
    model = get_peft_model(load_causal_lm(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    found = {}
    for fn in (triage, classify):
        directory = found[fn.__name__] = root / fn.__name__
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        write_manifest(directory, _manifest(fn, tokenizer, tiny_model_dir))
    return found


@pytest.fixture(scope="module")
def server(adapters, tiny_model_dir):
    """The server in-process on 127.0.0.1 (a free port), in a background thread: the two
    adapters (``triage`` named explicitly, ``classify`` by its manifest) and the tiny model as
    the base model ``tiny``. Yields ``(base_url, app)``."""
    from localdistil.serve import create_app, load_served

    served = load_served([f"triage={adapters['triage']}", str(adapters["classify"])],
                         base=f"tiny={tiny_model_dir}")
    app = create_app(served, api_key=API_KEY, max_batch=8, batch_wait_ms=5,
                     max_prompt_tokens=MAX_PROMPT_TOKENS)
    with running(app) as url:
        yield url, app


@pytest.fixture
def client(server):
    from openai import OpenAI

    url, _ = server
    with OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=TIMEOUT) as client:
        yield client


def _user(payload) -> list[dict[str, str]]:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return [{"role": "user", "content": text}]


# -- the prompt: token for token what dispatch renders ------------------------------------------


def test_parameters_are_recovered_from_the_rendered_signature():
    def wide(a: int, b: float = 1.5, *, tags: set[str] | None = None,
             pair: tuple[int, str] = (1, "x"), mode: Literal["fast", "slow"] = "fast",
             extra: dict[str, int] | None = None) -> Ticket:
        """A wide signature."""

    spec = FunctionSpec.from_function(wide)
    params = FunctionParameters(spec.name, spec.signature)
    assert params.names == spec.parameters
    for call in ({"a": 1}, {"a": 2, "b": 3}, {"a": 3, "tags": {"z", "a", "m"}, "mode": "slow"},
                 {"a": 4, "pair": (2, "y"), "extra": {"k": 1}}, {"extra": None, "a": 5, "b": 0.25}):
        wire = json.loads(json.dumps(spec.bind((), call)))  # what a client sends, as JSON
        if "tags" in call:
            wire["tags"] = ["m", "z", "a", "a"]  # any order, duplicates: a set is sorted
        assert params.bind(wire) == spec.bind((), call), call
        assert list(params.bind(wire)) == list(spec.parameters)  # signature order, defaults in
    for bad, param in (({"a": "1"}, "arguments.a"), ({"a": 1, "b": "x"}, "arguments.b"),
                       ({"a": 1, "mode": "medium"}, "arguments.mode"), ({}, "arguments.a"),
                       ({"a": 1, "c": 2}, "arguments.c"), ({"a": True}, "arguments.a")):
        with pytest.raises(ArgumentError) as caught:
            params.bind(bad)
        assert caught.value.param == param, bad


def test_what_a_signature_cannot_carry_is_taken_as_any_json():
    params = FunctionParameters("f", "def f(color: Color = <Color.RED: 'red'>, n: int = 2) -> M")
    assert params.bind({"color": "blue"}) == {"color": "blue", "n": 2}
    with pytest.raises(ArgumentError, match="missing argument 'color'"):
        params.bind({})
    assert FunctionParameters("f", None).bind({"b": 1, "a": 2}) == {"b": 1, "a": 2}
    local = FunctionParameters("f", "def f(order: make.<locals>.Order) -> make.<locals>.Out")
    assert local.bind({"order": {"id": 1}}) == {"order": {"id": 1}}  # any JSON, as it came


def test_the_served_prompt_is_the_prompt_dispatch_renders(adapters, tmp_path):
    @Instructions(path=str(tmp_path / "t.jsonl")).distil
    def triage(title: str, severity: int = 2, labels: list[str] | None = None) -> Ticket:
        """Triage a ticket."""

    engine = Engine.for_adapter(adapters["triage"])
    params = FunctionParameters(engine.manifest.name, engine.manifest.signature)
    for call in ({"title": "it crashes"}, {"title": "é ü \" \\n", "severity": 5},
                 {"labels": ["b", "a"], "title": "x", "severity": 1}):
        assert call_prompt(engine, params, call) == engine.call_prompt(triage.spec.bind((), call))


# -- the openai client --------------------------------------------------------------------------


def test_create_answers_canonical_json_with_the_usage_of_the_dispatch_prompt(client, adapters):
    engine = Engine.for_adapter(adapters["triage"])
    call = {"title": "login fails", "severity": 4}
    response = client.chat.completions.create(model="triage", messages=_user(call),
                                              response_format={"type": "json_object"})
    choice = response.choices[0]
    ticket = Ticket.model_validate_json(choice.message.content)
    assert choice.message.content == ticket.model_dump_json()  # canonical compact JSON
    assert choice.finish_reason == "stop" and response.object == "chat.completion"
    prompt = engine.call_prompt(FunctionSpec.from_function(triage).bind((), call))
    assert response.usage.prompt_tokens == len(prompt)
    assert response.usage.completion_tokens > 0
    assert response.system_fingerprint == engine.manifest.fingerprint


def test_the_served_answer_is_in_process_dispatchs_answer(client, adapters):
    @Instructions().distil(model=str(adapters["triage"]), mode="dispatch")
    def triage(title: str, severity: int = 2, labels: list[str] | None = None) -> Ticket:
        """Triage a ticket."""

    for call in ({"title": "a"}, {"title": "b", "severity": 5, "labels": ["ui"]}):
        served = client.chat.completions.parse(model="triage", messages=_user(call),
                                               response_format=Ticket)
        assert served.choices[0].message.parsed == triage(**call)


def test_parse_sends_a_strict_schema_and_gets_the_parsed_model(client):
    response = client.chat.completions.parse(
        model="triage", messages=[{"role": "user", "content": "see arguments"}],
        response_format=Ticket, extra_body={"arguments": {"title": "slow page"}})
    assert isinstance(response.choices[0].message.parsed, Ticket)


def test_a_one_string_function_takes_the_user_text_itself(client):
    text = "buy cheap pills"
    by_text = client.chat.completions.parse(model="classify", messages=_user(text),
                                            response_format=Flags)
    by_object = client.chat.completions.parse(model="classify", messages=_user({"text": text}),
                                              response_format=Flags)
    assert isinstance(by_text.choices[0].message.parsed, Flags)
    assert by_text.choices[0].message.content == by_object.choices[0].message.content
    assert by_text.usage.prompt_tokens == by_object.usage.prompt_tokens


def test_the_prompt_dispatch_renders_is_understood_as_the_call(client, adapters):
    """What a client sends vLLM (dispatch's rendered prompt) works here unchanged."""
    from localdistil.prompts import render_messages

    manifest = Engine.for_adapter(adapters["triage"]).manifest
    call = {"title": 'say "hi", twice', "severity": 4, "labels": ["a"]}
    for style in ("compact", "full"):
        messages = render_messages(name="triage", args=call, style=style,
                                   signature=manifest.signature, doc=manifest.doc)
        rendered = client.chat.completions.create(model="triage", messages=messages)
        by_arguments = client.chat.completions.create(model="triage", messages=_user(call))
        assert rendered.choices[0].message.content == by_arguments.choices[0].message.content
        assert rendered.usage.prompt_tokens == by_arguments.usage.prompt_tokens


def test_a_forced_tool_is_answered_with_a_tool_call(client):
    from openai import pydantic_function_tool

    response = client.chat.completions.create(
        model="triage", messages=_user({"title": "crash"}), tools=[pydantic_function_tool(Ticket)],
        tool_choice={"type": "function", "function": {"name": "Ticket"}})
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "Ticket" and call.id
    Ticket.model_validate_json(call.function.arguments)


def test_streaming_sends_chunks_that_add_up_to_the_answer(client):
    messages = _user({"title": "streamed"})
    whole = client.chat.completions.create(model="triage", messages=messages)
    stream = client.chat.completions.create(model="triage", messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_a_streamed_tool_call_adds_up_to_the_arguments(client):
    from openai import pydantic_function_tool

    with client.chat.completions.stream(model="triage", messages=_user({"title": "s"}),
                                        tools=[pydantic_function_tool(Ticket)],
                                        tool_choice="required") as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Ticket)


def test_a_token_budget_that_runs_out_finishes_with_length_and_the_partial_text(client):
    messages = _user({"title": "x"})
    full = client.chat.completions.create(model="triage", messages=messages)
    cut = client.chat.completions.create(model="triage", messages=messages, max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens <= 3
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)


def test_sampling_with_a_seed_is_repeatable(client):
    answers = [client.chat.completions.create(model="triage", messages=_user({"title": "x"}),
                                              temperature=1.0, seed=7).choices[0].message.content
               for _ in range(2)]
    assert answers[0] == answers[1]
    Ticket.model_validate_json(answers[0])


def test_models_and_health(client, server, adapters, tiny_model_dir):
    url, _ = server
    cards = {model.id: model for model in client.models.list()}
    assert set(cards) == {"triage", "classify", "tiny"}
    assert cards["triage"].adapter == str(adapters["triage"].resolve())
    assert cards["triage"].base_model == str(tiny_model_dir)
    assert cards["tiny"].adapter is None and cards["tiny"].base_model == str(tiny_model_dir)
    assert cards["classify"].function.startswith("def classify(text: str)")
    assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}  # no key needed


# -- errors, in OpenAI's shape ------------------------------------------------------------------


def test_an_unknown_model_is_a_404_model_not_found(client):
    import openai

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=_user({}))
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model" and "triage" in caught.value.body["message"]


def test_a_wrong_or_missing_api_key_is_a_401(server):
    import openai

    url, _ = server
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0, timeout=TIMEOUT)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model="triage", messages=_user({"title": "x"}))
    assert caught.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401


@pytest.mark.parametrize(("kwargs", "param", "words"), [
    ({"extra_body": {"arguments": {"title": 3}}}, "arguments.title", "valid string"),
    ({"extra_body": {"arguments": {"title": "x", "urgency": 1}}}, "arguments.urgency",
     "no parameter"),
    ({"extra_body": {"arguments": {"severity": 1}}}, "arguments.title",
     "missing argument 'title'"),
    ({}, "messages", "not a JSON object"),
    ({"n": 2}, "n", "n > 1"),
    ({"extra_body": {"colour": "red"}}, "colour", "Unrecognized request argument"),
    ({"max_tokens": "many"}, "max_tokens", "integer"),
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "Flags", "schema": Flags.model_json_schema()}}},
     "response_format", "has the field 'spam'"),
])
def test_bad_requests_are_400s_that_name_the_parameter(client, kwargs, param, words):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="triage", messages=_user("not json"), **kwargs)
    error = caught.value.body
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_a_schema_that_differs_only_in_spelling_is_accepted(client):
    from openai.lib._pydantic import to_strict_json_schema

    schema = to_strict_json_schema(Ticket)
    schema["properties"] = dict(reversed(schema["properties"].items()))
    schema["description"] = "whatever the client says"
    response = client.chat.completions.create(
        model="triage", messages=_user({"title": "x"}),
        response_format={"type": "json_schema",
                         "json_schema": {"name": "T", "schema": schema, "strict": True}})
    Ticket.model_validate_json(response.choices[0].message.content)
    narrower = {"enum": ["bug"], "type": "string"}
    other = {**schema, "properties": {**schema["properties"], "kind": narrower}}
    import openai

    with pytest.raises(openai.BadRequestError, match=r"properties\.kind\.enum"):
        client.chat.completions.create(
            model="triage", messages=_user({"title": "x"}),
            response_format={"type": "json_schema", "json_schema": {"name": "T", "schema": other}})


def test_a_prompt_over_the_limit_is_a_400_naming_the_limit(client):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="classify", messages=_user("word " * 2000))
    assert caught.value.body["code"] == "context_length_exceeded"
    assert f"the limit is {MAX_PROMPT_TOKENS}" in caught.value.body["message"]


def test_malformed_oversized_and_abandoned_requests_leave_the_server_answering(server, client):
    url, _ = server
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT) as http:
        broken = http.post("/v1/chat/completions", content=b'{"model": "triage", "messages": [')
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == "invalid_json"
        assert http.post("/v1/chat/completions", content=b"[1, 2]").status_code == 400
        assert http.post("/v1/chat/completions", content=b"").status_code == 400
        huge = json.dumps({"model": "triage", "messages": _user("x" * (2 << 20))}).encode()
        too_big = http.post("/v1/chat/completions", content=huge)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
        assert http.get("/v1/nothing").status_code == 404
        assert "error" in http.get("/v1/nothing").json()
        deeply = '{"title":' * 20_000 + '"x"' + "}" * 20_000
        nested = {"model": "triage", "messages": _user(deeply)}
        deep = http.post("/v1/chat/completions", json=nested)  # deeper than Python recurses
        assert deep.status_code == 400 and "nests too deeply" in deep.json()["error"]["message"]
        body = {"model": "triage", "messages": _user({"title": "gone"}), "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            next(stream.iter_lines())  # read one event, then hang up mid-stream
    answer = client.chat.completions.create(model="triage", messages=_user({"title": "still here"}))
    Ticket.model_validate_json(answer.choices[0].message.content)


# -- base models --------------------------------------------------------------------------------


def test_a_base_model_answers_the_schema_a_request_gives(client):
    import openai

    parsed = client.chat.completions.parse(model="tiny", messages=_user("how do you feel?"),
                                           response_format=Flags, max_tokens=40)
    assert isinstance(parsed.choices[0].message.parsed, Flags)
    assert parsed.system_fingerprint is None
    anything = client.chat.completions.create(model="tiny", messages=_user("hi"), max_tokens=40,
                                              response_format={"type": "json_object"})
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError, match="base model"):
        client.chat.completions.create(model="tiny", messages=_user("hi"))


def test_a_base_model_with_tools_required_calls_one_of_them(client):
    from openai import pydantic_function_tool

    tools = [pydantic_function_tool(Flags), pydantic_function_tool(Ticket)]
    response = client.chat.completions.create(model="tiny", messages=_user("call a tool"),
                                              tools=tools, tool_choice="required", max_tokens=60)
    (call,) = response.choices[0].message.tool_calls
    assert response.choices[0].finish_reason == "tool_calls"
    model = {"Flags": Flags, "Ticket": Ticket}[call.function.name]
    model.model_validate_json(call.function.arguments)


# -- instructor ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["JSON_SCHEMA", "TOOLS"])
def test_instructor_against_the_adapter_and_the_base_model(client, mode):
    import instructor

    patched = instructor.from_openai(client, mode=getattr(instructor.Mode, mode))
    ticket = patched.chat.completions.create(
        model="triage", response_model=Ticket, max_retries=0,
        messages=_user({"title": "printer on fire", "severity": 5}))
    assert isinstance(ticket, Ticket)
    flags = patched.chat.completions.create(model="tiny", response_model=Flags, max_retries=0,
                                            max_tokens=40, messages=_user("is this spam?"))
    assert isinstance(flags, Flags)


# -- batching -----------------------------------------------------------------------------------


def test_concurrent_requests_are_decoded_together_with_the_answers_they_get_alone(client, server):
    _, app = server
    batcher = app.state.batchers["triage"]
    calls = [{"title": f"ticket {n}", "severity": n % 5} for n in range(6)]
    alone = [client.chat.completions.create(model="triage", messages=_user(c))
             .choices[0].message.content for c in calls]
    batcher.wait_s = 0.5  # long enough for every thread's request to arrive
    try:
        before = batcher.calls
        with ThreadPoolExecutor(len(calls)) as pool:
            together = list(pool.map(
                lambda c: client.chat.completions.create(model="triage", messages=_user(c)),
                calls, timeout=TIMEOUT))
        engine_calls = batcher.calls - before
    finally:
        batcher.wait_s = 0.005
    assert [r.choices[0].message.content for r in together] == alone
    assert engine_calls < len(calls)


def test_one_thread_loads_the_served_models_and_makes_every_engine_call(client, adapters,
                                                                        monkeypatch):
    """On a CPU a model decodes ~25 % slower in a thread other than the one that loaded it, so
    ``localdistil serve`` loads and decodes in one thread, never in asyncio's pool."""
    import threading

    import uvicorn

    import localdistil.serve.served
    from localdistil.serve.server import serve

    threads = []
    answer = Engine.answer

    def recording(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return answer(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "answer", recording)
    calls = [{"title": f"ticket {n}", "severity": n % 5} for n in range(4)]
    client.chat.completions.create(model="triage", messages=_user(calls[0]))
    with ThreadPoolExecutor(len(calls)) as pool:
        list(pool.map(lambda c: client.chat.completions.create(model="triage", messages=_user(c)),
                      calls, timeout=TIMEOUT))
    assert len(set(threads)) == 1 and threads[0].startswith("localdistil-engine")

    loading = []
    load = localdistil.serve.served.load_served

    def recording_load(*args, **kwargs):
        loading.append(threading.current_thread().name)
        return load(*args, **kwargs)

    monkeypatch.setattr(localdistil.serve.served, "load_served", recording_load)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    serve([str(adapters["classify"])])
    assert loading == threads[:1]


def test_at_shutdown_each_model_logs_its_requests_and_batches(adapters, caplog):
    from openai import OpenAI

    from localdistil.serve import create_app, load_served

    app = create_app(load_served([f"triage={adapters['triage']}"]))
    with caplog.at_level("INFO", logger="localdistil.serve"), running(app) as url:
        with OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                    timeout=TIMEOUT) as api:
            for n in range(3):
                api.chat.completions.create(model="triage",
                                            messages=_user({"title": f"ticket {n}"}))
    assert "triage: 3 requests answered in 3 batches (mean batch 1.0)" in caplog.messages


# -- the command line ---------------------------------------------------------------------------


def test_the_serve_command_parses_into_the_library_call(monkeypatch):
    from localdistil import cli

    seen = {}
    monkeypatch.setattr("localdistil.serve.serve", lambda targets, **options: seen.update(
        targets=targets, **options))
    assert cli.main(["serve", "runs/a", "mult=runs/b", "--base", "smollm2-135m", "--port", "9",
                     "--api-key", "k", "--max-batch", "4", "--batch-wait-ms", "2"]) == 0
    assert seen == {"targets": ["runs/a", "mult=runs/b"], "base": ["smollm2-135m"],
                    "host": "127.0.0.1", "port": 9, "api_key": "k", "max_batch": 4,
                    "batch_wait_ms": 2.0}


def test_serve_warns_without_an_api_key_off_loopback_and_refuses_nothing_to_serve(
        monkeypatch, capsys, tiny_model_dir):
    import uvicorn

    from localdistil import cli
    from localdistil.serve import serve
    from localdistil.serve.server import is_loopback

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: ran.append(options))
    serve([], base=f"tiny={tiny_model_dir}", host="0.0.0.0", port=1)
    assert "warning: serving on 0.0.0.0 without --api-key" in capsys.readouterr().err
    serve([], base=f"tiny={tiny_model_dir}", port=1)
    assert "warning" not in capsys.readouterr().err
    assert ran == [{"host": "0.0.0.0", "port": 1, "log_level": "info"},
                   {"host": "127.0.0.1", "port": 1, "log_level": "info"}]
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")
    assert cli.main(["serve"]) == 1
    assert "nothing to serve" in capsys.readouterr().err


def test_clients_answered_together_stay_in_one_batch():
    """Eight clients that each send their next request a few milliseconds after an answer: the
    batcher waits for the ones it just answered, rather than closing a batch with the half that
    was already waiting (the two halves would then take turns, four at a time)."""
    import asyncio
    import time as clock

    from localdistil.inference.engine import Outcome
    from localdistil.serve.batcher import Batcher, Decode

    class SlowEngine:  # a batch costs the same whatever its size, as on a CPU up to ~8
        def answer(self, prompts, **_):
            clock.sleep(0.05)
            return [Outcome("ok", "{}", value={}) for _ in prompts]

    async def main() -> Batcher:
        batcher = Batcher(max_batch=8, wait_s=0.005)
        decode = Decode(engine=SlowEngine(), schema={"type": "object"}, budget=8)

        async def client(index: int) -> None:
            await asyncio.sleep(index * 0.004)  # they start a little apart
            for _ in range(10):
                await batcher.submit([1, 2, 3], decode)
                await asyncio.sleep(0.01)  # the response travels, the next request comes back

        await asyncio.gather(*(client(i) for i in range(8)))
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    assert batcher.items == 80
    assert batcher.items / batcher.calls >= 6, (batcher.items, batcher.calls)
