"""Tool sets: the union grammar, parallel calls, validators -> resample / fallback / raise,
function tools executed, the rewritten history, records read back with every parallel call,
dataset rows and train/serve prompt parity, and the server answering several tool calls.

The adapter is written by hand (PEFT on the tiny random model + a manifest for the tool set),
not trained: under the grammar even a random model answers valid calls."""

from __future__ import annotations

import json
import re
from typing import Literal

import pytest
from pydantic import BaseModel, field_validator
from serving import running

from localdistil import AdapterMismatchError, ToolCallError, Toolset, TraceWarning, read_records
from localdistil.inference.grammar import canonical_regex
from localdistil.inference.tools import Tool, ToolUnion
from localdistil.prompts import PROMPT_VERSION, encode_prompt, render_toolset_messages
from localdistil.records.record import toolset_info
from localdistil.spec import fingerprint, schema_hash

API_KEY = "sk-test-tools"


class Refund(BaseModel):
    """Refund an order."""

    order_id: int
    reason: Literal["damaged", "late", "other"]


class Escalation(BaseModel):
    """Hand the conversation to a person."""

    urgent: bool
    team: Literal["billing", "shipping"]


def lookup_order(order_id: int, detailed: bool = False) -> dict:
    """Look an order up.

    Args:
        order_id: the order's number.
        detailed: whether to include the items.
    """
    return {"order_id": order_id, "status": "shipped", "detailed": detailed}


TOOLS = [Refund, Escalation, lookup_order]


def route(messages):
    """A teacher: two calls for a damaged parcel, else one."""
    text = messages[-1]["content"]
    number = int(re.search(r"\d+", text).group())
    if "damaged" in text:
        return [{"name": "Refund", "arguments": {"order_id": number, "reason": "damaged"}},
                {"name": "Escalation", "arguments": json.dumps({"urgent": True,
                                                                "team": "shipping"})}]
    return [{"name": "lookup_order", "arguments": {"order_id": str(number)}}]


def _manifest(toolset, tokenizer, model_dir, max_output_tokens=40):
    from localdistil.models.adapter import Manifest, tokenizer_hash
    from localdistil.models.resolve import model_content_hash
    from localdistil.prompts import toolset_doc

    doc = toolset_doc(toolset.union.definitions)
    return Manifest(
        base_model=str(model_dir), base_model_path=str(model_dir),
        base_model_hash=model_content_hash(model_dir), tokenizer_hash=tokenizer_hash(tokenizer),
        function=toolset.name, name=toolset.name, signature=toolset.signature, doc=doc,
        fingerprint=fingerprint(toolset.signature, doc, toolset.schema),
        output_schema=toolset.schema, schema_hash=schema_hash(toolset.schema),
        prompt_style="compact", prompt_version=PROMPT_VERSION,
        max_output_tokens=max_output_tokens, recipe={},
    )


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """``{"support": dir, "single": dir, "repairing": dir}``: untrained LoRA adapters on the
    tiny model with the manifests of a parallel tool set, of one answering a single call, and of
    the parallel one as if it had learnt from repair turns."""
    from peft import LoraConfig, get_peft_model

    from localdistil.models.adapter import write_manifest
    from localdistil.models.resolve import load_causal_lm, load_tokenizer

    root = tmp_path_factory.mktemp("tools")
    tokenizer = load_tokenizer(tiny_model_dir)
    model = get_peft_model(load_causal_lm(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    found = {}
    for key, toolset in (("support", Toolset("support", TOOLS)),
                         ("single", Toolset("single", TOOLS, parallel=False)),
                         ("repairing", Toolset("support", TOOLS))):
        directory = found[key] = root / key
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        manifest = _manifest(toolset, tokenizer, tiny_model_dir)
        if key == "repairing":  # as if its training data held repair turns
            manifest = manifest.model_copy(update={"repair_examples": 3})
        write_manifest(directory, manifest)
    return found


# -- the grammar ---------------------------------------------------------------------------------


def _call(name, **arguments):
    return {"name": name, "arguments": arguments}


def test_the_grammar_admits_clean_calls_only():
    regex = re.compile(canonical_regex(Toolset("support", TOOLS, max_calls=2).schema))

    def admits(value) -> bool:
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return regex.fullmatch(text) is not None

    refund = _call("Refund", order_id=17, reason="late")
    lookup = _call("lookup_order", order_id=3, detailed=False)
    assert admits({"tool_calls": [refund]})
    assert admits({"tool_calls": [refund, lookup]})  # parallel calls, name first
    assert not admits({"tool_calls": [refund, lookup, refund]})  # more than max_calls
    assert not admits({"tool_calls": []})
    assert not admits({"tool_calls": [_call("Cancel", order_id=17)]})  # an unknown tool
    assert not admits({"tool_calls": [_call("Refund", order_id="17", reason="late")]})
    assert not admits({"tool_calls": [_call("Refund", order_id=17, reason="lost")]})
    assert not admits({"tool_calls": [{"arguments": refund["arguments"], "name": "Refund"}]})
    assert not admits('{"tool_calls":[{"name":"Refund","arguments":{"order_id":17,')  # bad JSON
    assert not admits('{"tool_calls": [' + json.dumps(refund) + "]}")  # free whitespace


def test_without_parallel_calls_the_answer_is_one_object():
    schema = Toolset("single", TOOLS, parallel=False).schema
    regex = re.compile(canonical_regex(schema))
    refund = json.dumps(_call("Refund", order_id=1, reason="other"), separators=(",", ":"))
    assert regex.fullmatch(refund)
    assert not regex.fullmatch(f'{{"tool_calls":[{refund}]}}')
    assert toolset_info(schema) == {"parallel": False, "max_calls": 1,
                                    "tools": ["Refund", "Escalation", "lookup_order"]}


def test_defs_of_several_tools_are_merged_and_a_clash_renamed():
    class Item(BaseModel):
        sku: str

    class Order(BaseModel):
        items: list[Item]

    class Reorder(BaseModel):  # the same Item: one definition
        item: Item

    Clashing = type("Item", (BaseModel,), {"__annotations__": {"count": int}})

    class Restock(BaseModel):  # another model named Item
        item: Clashing  # type: ignore[valid-type]

    schema = Toolset("shop", [Order, Reorder, Restock]).schema
    assert set(schema["$defs"]) == {"Item", "Restock_Item"}
    assert schema["$defs"]["Restock_Item"]["properties"] == {"count": {"title": "Count",
                                                                       "type": "integer"}}
    regex = re.compile(canonical_regex(schema))
    text = ('{"tool_calls":[{"name":"Order","arguments":{"items":[{"sku":"a"}]}},'
            '{"name":"Restock","arguments":{"item":{"count":2}}}]}')
    assert regex.fullmatch(text)
    assert not regex.fullmatch(text.replace('{"count":2}', '{"sku":"c"}'))


def test_function_tools_take_their_parameters_from_signature_and_docstring():
    tool = Tool.of(lookup_order)
    assert tool.description == "Look an order up."
    properties = tool.definition["parameters"]["properties"]
    assert properties["order_id"] == {"description": "the order's number.", "title": "Order Id",
                                      "type": "integer"}
    assert properties["detailed"]["default"] is False
    with pytest.raises(TypeError, match="Pydantic model class or a function"):
        ToolUnion("x", [42])


# -- trace mode, records, the history ------------------------------------------------------------


def test_trace_runs_function_tools_records_every_parallel_call_and_reads_back(tmp_path):
    path = tmp_path / "support.jsonl"
    support = Toolset("support", TOOLS, teacher=route, path=path)
    result = support.complete("my parcel 17 arrived damaged", mode="trace")
    assert result.success and result.source == "teacher"
    assert [c.name for c in result.tool_calls] == ["Refund", "Escalation"]
    assert result.tool_call_results == [Refund(order_id=17, reason="damaged"),
                                        Escalation(urgent=True, team="shipping")]
    looked = support.complete("where is order 42?", mode="trace")
    assert looked.tool_call_results == [{"order_id": 42, "status": "shipped", "detailed": False}]
    # the history: the user's message, one assistant message with the calls, their results
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "tool"]
    assert [c["function"]["name"] for c in result.messages[1]["tool_calls"]] == [
        "Refund", "Escalation"]
    support.close()

    records = read_records(path, strict=True).records
    assert len(records) == 2
    record = records[0]
    assert record.is_toolset and record.name == "support"
    assert record.args == {"user_message": "my parcel 17 arrived damaged"}
    assert record.output == {"tool_calls": [
        {"name": "Refund", "arguments": {"order_id": 17, "reason": "damaged"}},
        {"name": "Escalation", "arguments": {"urgent": True, "team": "shipping"}}]}
    assert record.output_schema == support.schema
    assert [t["name"] for t in record.tools] == ["Refund", "Escalation", "lookup_order"]
    # lookup_order's default is written: the canonical answer names every field
    assert records[1].output["tool_calls"][0]["arguments"] == {"order_id": 42, "detailed": False}
    line = json.loads(path.read_text().splitlines()[0])
    assert len(line["messages"][-1]["tool_calls"]) == 2 and len(line["tools"]) == 3


def test_an_invalid_teacher_call_raises_and_is_not_recorded(tmp_path):
    path = tmp_path / "t.jsonl"
    support = Toolset("support", TOOLS, path=path,
                      teacher=lambda m: [{"name": "Cancel", "arguments": {}}])
    with pytest.raises(ToolCallError, match="no tool 'Cancel'"):
        support.complete("cancel 3", mode="trace")
    assert not path.exists() or path.read_text() == ""


def test_openai_parallel_tool_calls_read_with_nothing_dropped(tmp_path):
    """A functioncalming / OpenAI log: several tools, several calls, tools in any order."""
    tools = [{"type": "function", "function": d} for d in ToolUnion("x", TOOLS).definitions]
    lines = []
    for index, order in enumerate((tools, tools[::-1])):
        calls = [{"id": f"c{i}", "type": "function",
                  "function": {"name": n, "arguments": json.dumps(a)}}
                 for i, (n, a) in enumerate([("Refund", {"order_id": index, "reason": "late"}),
                                             ("Escalation", {"urgent": False, "team": "billing"}),
                                             ("lookup_order", {"order_id": 9})])]
        lines.append({"messages": [{"role": "system", "content": "You route support mail."},
                                   {"role": "user", "content": f"late parcel {index}"},
                                   {"role": "assistant", "content": None, "tool_calls": calls}],
                      "tools": order})
    path = tmp_path / "openai.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    found = read_records(path)
    assert found.problems == []
    first, second = found.records
    assert [c["name"] for c in first.output["tool_calls"]] == ["Refund", "Escalation",
                                                               "lookup_order"]
    assert first.output["tool_calls"][2] == {"name": "lookup_order", "arguments": {"order_id": 9}}
    assert first.name == second.name == "Escalation_Refund_lookup_order"
    assert schema_hash(first.output_schema) == schema_hash(second.output_schema)
    assert first.args == {"user_message": "late parcel 0"} and first.is_toolset


def test_an_unknown_tool_in_a_log_is_a_problem_not_a_silent_drop(tmp_path):
    line = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "Refund", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "Nope", "arguments": "{}"}}]}],
        "tools": [{"type": "function", "function": {"name": "Refund", "parameters": {}}}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    problems = read_records(path).problems
    assert len(problems) == 1 and "'Nope'" in problems[0].reason


def test_dataset_rows_train_the_tool_set_prompt_and_every_call(tiny_model_dir, tmp_path):
    from localdistil.models.resolve import load_tokenizer
    from localdistil.training.dataset import build_dataset, select_records
    from localdistil.training.recipe import parse_recipe

    path = tmp_path / "support.jsonl"
    support = Toolset("support", TOOLS, teacher=route, path=path)
    for number in range(10):
        support.complete(f"parcel {number} arrived damaged", mode="trace")
    support.close()
    recipe = parse_recipe({"model": str(tiny_model_dir), "train": {"seed": 0},
                           "data": {"train": [str(path)], "function": "support",
                                    "eval_fraction": 0.2}})
    tokenizer = load_tokenizer(tiny_model_dir)
    data = build_dataset(select_records(recipe), tokenizer, recipe)
    row = data.train[0]
    message = json.loads(row["args"])["user_message"]
    assert row["prompt"] == render_toolset_messages("support", support.union.definitions, message)
    number = int(re.search(r"\d+", message).group())
    calls = [{"name": "Refund", "arguments": {"order_id": number, "reason": "damaged"}},
             {"name": "Escalation", "arguments": {"urgent": True, "team": "shipping"}}]
    assert row["completion"][0]["content"] == json.dumps({"tool_calls": calls},
                                                         separators=(",", ":"))
    assert data.function.output_schema == support.schema
    assert row["input_ids"][:row["prompt_length"]] == encode_prompt(tokenizer, row["prompt"])


# -- dispatch on the engine ----------------------------------------------------------------------


def test_train_dispatch_and_serve_render_the_same_prompt_tokens(adapters):
    from localdistil.inference.engine import Engine
    from localdistil.serve.functions import FunctionParameters, call_prompt

    support = Toolset("support", TOOLS)
    engine = Engine.for_adapter(adapters["support"])
    message = 'Order 12 "arrived" late'
    dispatched = support.prompt(engine, message)
    trained = encode_prompt(engine.tokenizer,
                            render_toolset_messages("support", support.union.definitions,
                                                    message))
    served = call_prompt(engine, FunctionParameters("support", engine.manifest.signature),
                         {"user_message": message})
    assert dispatched == trained == served == engine.call_prompt({"user_message": message})
    repairs = [{"output": '{"tool_calls":[]}', "error": "at least one call"}]
    assert support.prompt(engine, message, repairs) == encode_prompt(
        engine.tokenizer, render_toolset_messages("support", support.union.definitions, message,
                                                  repairs=repairs))


def test_dispatch_answers_valid_parallel_calls_and_runs_function_tools(adapters):
    ran = []

    def lookup(order_id: int, detailed: bool = False) -> dict:
        """Look an order up."""
        ran.append(order_id)
        return {"order_id": order_id}

    lookup.__name__, lookup.__doc__ = "lookup_order", lookup_order.__doc__  # the same tool
    support = Toolset("support", [Refund, Escalation, lookup], model=adapters["support"])
    result = support.complete("where is order 5?")
    assert result.success and result.source == "model" and result.error is None
    assert 1 <= len(result.tool_calls) <= 4
    for call, value in zip(result.tool_calls, result.tool_call_results):
        assert call.name in ("Refund", "Escalation", "lookup_order")
        if call.name == "lookup_order":
            assert value == {"order_id": call.arguments.order_id}
        else:
            assert value == call.arguments
    assert ran == [c.arguments.order_id for c in result.tool_calls if c.name == "lookup_order"]
    assert result.messages == result.messages_raw  # nothing was refused

    single = Toolset("single", TOOLS, parallel=False).complete("x", model=adapters["single"])
    assert single.success and len(single.tool_calls) == 1


def test_an_adapter_of_other_tools_is_a_mismatch(adapters):
    other = Toolset("support", [Refund, Escalation])
    with pytest.raises(AdapterMismatchError, match="tool set support"):
        other.complete("x", model=adapters["support"])


def _refusing_tools(refuse_times: int, count=None):
    """The tools again, refusing their first ``refuse_times`` calls (counted in ``count["n"]``):
    the models by a validator, the function tool by raising ToolCallError."""
    count = {"n": 0} if count is None else count

    def gate() -> None:
        count["n"] += 1
        if count["n"] <= refuse_times:
            raise ToolCallError("not this time")

    class Refund(BaseModel):  # noqa: F811 - the same tool name, a refusing validator
        """Refund an order."""

        order_id: int
        reason: Literal["damaged", "late", "other"]

        @field_validator("reason")
        @classmethod
        def check(cls, value):
            gate()
            return value

    def lookup_order(order_id: int, detailed: bool = False) -> dict:
        gate()
        return {"order_id": order_id}

    lookup_order.__doc__ = globals()["lookup_order"].__doc__

    class Escalation(BaseModel):
        """Hand the conversation to a person."""

        urgent: bool
        team: Literal["billing", "shipping"]

        @field_validator("team")
        @classmethod
        def check(cls, value):
            gate()
            return value

    return [Refund, Escalation, lookup_order]


def test_refused_answers_raise_with_on_invalid_raise(adapters):
    support = Toolset("support", _refusing_tools(10**6), on_invalid="raise")
    with pytest.raises(ToolCallError, match="not this time") as caught:
        support.complete("x", model=adapters["support"])
    assert caught.value.raw_output and caught.value.attempts == 1


def test_refused_answers_are_resampled_and_the_history_keeps_only_clean_calls(adapters):
    support = Toolset("support", _refusing_tools(1), retries=3)
    result = support.complete("refund 4", model=adapters["support"])
    assert result.success and result.retries_done >= 1
    assert result.attempts[0].error and "not this time" in result.attempts[0].error
    texts = [a.text for a in result.attempts]
    assert len(set(texts)) == len(texts)  # a resample never repeats a refused answer
    # the clean history has one assistant message; the raw one has the refusal too
    assert [m["role"] for m in result.messages].count("assistant") == 1
    assert [m["role"] for m in result.messages_raw].count("assistant") == len(result.attempts)
    assert any("Error: " in (m.get("content") or "") for m in result.messages_raw)
    assert result.messages[-len(result.tool_calls) - 1:] == result.messages_raw[
        -len(result.tool_calls) - 1:]

    exhausted = Toolset("support", _refusing_tools(10**6), retries=2).complete(
        "refund 4", model=adapters["support"])
    assert not exhausted.success and isinstance(exhausted.error, ToolCallError)
    assert exhausted.retries_done == 2 and exhausted.tool_calls == []


def test_refused_answers_fall_back_to_the_teacher_and_are_recorded(adapters, tmp_path):
    path = tmp_path / "fallback.jsonl"
    tools = _refusing_tools(10**6)
    support = Toolset("support", tools, on_invalid="fallback", path=path,
                      teacher=lambda m: [{"name": "Escalation",
                                          "arguments": {"urgent": True, "team": "billing"}}])
    with pytest.raises(ToolCallError):  # the teacher's call is refused by the same validator
        support.complete("x", model=adapters["support"])
    support = Toolset("support", _refusing_tools(1), on_invalid="fallback", path=path,
                      teacher=route)
    result = support.complete("order 8 please", model=adapters["support"])
    assert result.success and result.source == "teacher"
    assert [c.name for c in result.tool_calls] == ["lookup_order"]
    record = read_records(path, strict=True).records[-1]
    assert record.output["tool_calls"][0]["name"] == "lookup_order"
    clean, repair = (json.loads(line)["localdistil"] for line in path.read_text().splitlines()[-2:])
    assert clean["fallback"]["rejected"] == [result.attempts[0].text]
    assert repair["repairs"] == [{"output": result.attempts[0].text,
                                  "error": result.attempts[0].error}]


def test_shadow_returns_the_teacher_and_records_agreement(adapters, tmp_path):
    path = tmp_path / "shadow.jsonl"
    support = Toolset("support", TOOLS, teacher=route, path=path, model=adapters["support"])
    result = support.complete("order 3 arrived damaged", mode="shadow")
    assert result.source == "teacher" and [c.name for c in result.tool_calls] == [
        "Refund", "Escalation"]
    block = json.loads(path.read_text())["localdistil"]
    assert block["shadow"]["agree"] is False and block["shadow"]["model"]
    assert support.agreement.summary()["calls"] == 1




# -- repair turns --------------------------------------------------------------------------------


def test_a_log_with_a_refused_attempt_reads_as_a_repair(tmp_path):
    """functioncalming's retries, as an OpenAI log: the refused calls, the tool message with the
    error, then the clean calls."""
    def call(name, arguments):
        return {"id": name, "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)}}

    tools = [{"type": "function", "function": d} for d in ToolUnion("x", TOOLS).definitions]
    line = {"tools": tools, "messages": [
        {"role": "user", "content": "refund order 5, it is late"},
        {"role": "assistant", "content": None,
         "tool_calls": [call("Refund", {"order_id": 5, "reason": "slow"})]},
        {"role": "tool", "tool_call_id": "Refund", "content": "Error: reason must be one of ..."},
        {"role": "assistant", "content": None,
         "tool_calls": [call("Refund", {"order_id": 5, "reason": "late"})]}]}
    path = tmp_path / "retries.jsonl"
    path.write_text(json.dumps(line) + "\n")
    (record,) = read_records(path, strict=True).records
    assert record.args == {"user_message": "refund order 5, it is late"}
    assert record.output == {"tool_calls": [
        {"name": "Refund", "arguments": {"order_id": 5, "reason": "late"}}]}
    assert record.repairs == [{
        "output": '{"tool_calls":[{"name":"Refund","arguments":{"order_id":5,"reason":"slow"}}]}',
        "error": "Error: reason must be one of ..."}]


def test_fallback_records_the_repair_turn_and_training_counts_it(adapters, tiny_model_dir,
                                                                 tmp_path):
    from localdistil.models.adapter import read_manifest
    from localdistil.models.resolve import load_tokenizer
    from localdistil.prompts import REPAIR_REQUEST
    from localdistil.training.dataset import build_dataset, select_records
    from localdistil.training.recipe import parse_recipe
    from localdistil.training.train import train

    path = tmp_path / "fallback.jsonl"
    count = {"n": 0}

    def teacher(messages):  # the tools refuse every call until the teacher is asked
        count["n"] = 10**6
        return route(messages)

    for number in range(8):
        count["n"] = 0
        support = Toolset("support", _refusing_tools(10**6, count), teacher=teacher, path=path,
                          on_invalid="fallback")
        assert support.complete(f"order {number} please", model=adapters["support"]).success
        support.close()
    records = read_records(path, strict=True).records
    assert len(records) == 16  # each call twice: as it is, and with the refused answer fed back
    clean, repair = records[0], records[1]
    assert clean.repairs == [] and clean.args == repair.args and clean.output == repair.output
    assert repair.repairs[0]["error"] and repair.repairs[0]["output"].startswith("{")
    line = json.loads(path.read_text().splitlines()[1])  # the OpenAI form shows the turns too
    assert [m["role"] for m in line["messages"]] == ["user", "assistant", "user", "assistant"]

    recipe = parse_recipe({"model": str(tiny_model_dir), "data": {
        "train": [str(path)], "function": "support", "eval_fraction": 0.25},
        "train": {"max_steps": 2, "batch_size": 4, "eval_samples": 0, "patience": None},
        "gate": {"min_exact": 0.0, "min_valid": 0.0}, "output": {"dir": str(tmp_path / "run")}})
    data = build_dataset(select_records(recipe), load_tokenizer(tiny_model_dir), recipe)
    assert not {row["args"] for row in data.train} & {row["args"] for row in data.eval}
    repaired = [row for row in data.train if row["repair_turns"]]
    assert repaired and all(row["prompt"][-1]["content"].startswith(
        REPAIR_REQUEST.split("{")[0]) for row in repaired)
    result = train(recipe)
    assert read_manifest(result.adapter_dir).repair_examples == len(repaired)


def test_repair_is_offered_only_by_an_adapter_that_learnt_it(adapters):
    support = Toolset("support", _refusing_tools(1), on_invalid="repair")
    with pytest.raises(AdapterMismatchError, match="learnt from no such turn"):
        support.complete("refund 4", model=adapters["support"])


def test_repair_feeds_the_refused_answer_and_its_error_back(adapters):
    from localdistil.inference.engine import Engine

    support = Toolset("support", _refusing_tools(1), on_invalid="repair", retries=2)
    fed = []
    prompt = support.prompt

    def spy(engine, user_message, repairs=()):
        fed.append(list(repairs))
        return prompt(engine, user_message, repairs)

    support.prompt = spy
    result = support.complete("refund 4", model=adapters["repairing"])
    assert result.success and result.source == "model"
    first, second = result.attempts[:2]
    assert "not this time" in first.error
    assert fed[:2] == [[], [{"output": first.text, "error": first.error}]]
    engine = Engine.for_adapter(adapters["repairing"])
    shown = engine.tokenizer.decode(prompt(engine, "refund 4", fed[1]))
    assert first.text in shown and f"Error: {first.error}\n" in shown  # as training renders it


# -- auto ----------------------------------------------------------------------------------------


def _copy_run(adapter, tmp_path):
    """A run of its own (auto keeps its state beside the adapter)."""
    import shutil

    return shutil.copytree(adapter, tmp_path / "run")


def _counting(answer):
    """A teacher answering ``answer(messages)``, counting its calls."""
    def teacher(messages):
        teacher.calls += 1
        return answer(messages)

    teacher.calls = 0
    return teacher


def test_auto_traces_without_adapter_then_shadows_dispatches_and_demotes(adapters, tmp_path):
    from localdistil.trace.auto_state import AutoPolicy

    run = _copy_run(adapters["support"], tmp_path)
    model_says = {}  # the model's own answers: a teacher that agrees with it
    for message in ("order 1 late", "order 2 late", "order 3 late", "order 4 late"):
        answer = Toolset("support", TOOLS, model=run).complete(message, mode="dispatch")
        assert answer.success
        model_says[message] = [{"name": c.name, "arguments": c.arguments.model_dump()}
                               for c in answer.tool_calls]
    agreeing = _counting(lambda messages: model_says[messages[-1]["content"]])
    policy = AutoPolicy(promote_at=0.9, demote_at=0.5, window=4, min_calls=2, monitor_rate=0.0)
    traces = tmp_path / "auto.jsonl"
    support = Toolset("support", TOOLS, teacher=agreeing, path=traces, policy=policy)

    # no promoted adapter: the teacher answers and the call is recorded
    empty = tmp_path / "empty-run"
    empty.mkdir()
    result = support.complete("order 1 late", mode="auto", model=empty)
    assert result.source == "teacher" and support.router_stats(empty).phase == "trace"

    # an adapter: shadow (the teacher answers, the model is compared) until proven
    for message in ("order 1 late", "order 2 late"):
        assert support.complete(message, mode="auto", model=run).source == "teacher"
    stats = support.router_stats(run)
    assert (stats.phase, stats.compared, stats.agreement) == ("dispatch", 2, 1.0)
    assert json.loads((run / "auto" / "support.json").read_text())["phase"] == "dispatch"

    # trusted: the model answers and the teacher is not asked
    asked = agreeing.calls
    result = support.complete("order 3 late", mode="auto", model=run)
    assert result.success and result.source == "model" and agreeing.calls == asked

    # another process's view of the same run: every call monitored, and the teacher now
    # disagrees, so the rolling agreement falls below demote_at and calls go back to shadowing
    other = [_call("lookup_order", order_id=123456, detailed=True)]
    assert other not in model_says.values()
    disagreeing = _counting(lambda messages: other)
    monitored = Toolset("support", TOOLS, teacher=disagreeing, path=traces,
                        policy=AutoPolicy(promote_at=0.9, demote_at=0.5, window=4, min_calls=2,
                                          monitor_rate=1.0))
    for message in ("order 3 late", "order 4 late", "order 1 late"):
        assert monitored.complete(message, mode="auto", model=run).source == "teacher"
    stats = monitored.router_stats(run)
    assert stats.phase == "shadow" and stats.summary()["demotions"] == 1
    records = [json.loads(line)["localdistil"] for line in traces.read_text().splitlines()]
    assert len(records) == 1 + 2 + 3  # every call the teacher answered, and only those
    assert [r["shadow"]["agree"] for r in records if "shadow" in r] == [
        True, True, False, False, False]


def test_auto_falls_back_to_the_teacher_where_the_model_cannot_answer(adapters, tmp_path):
    from localdistil.trace.auto_state import AutoPolicy

    run = _copy_run(adapters["support"], tmp_path)
    policy = AutoPolicy(promote_at=0.9, demote_at=0.5, window=4, min_calls=1, monitor_rate=0.0)
    state = run / "auto" / "support.json"
    state.parent.mkdir()
    version = Toolset("support", TOOLS, policy=policy).router_stats(run).version
    state.write_text(json.dumps({"version": version, "phase": "dispatch", "window": "1",
                                 "compared": 1, "agreed": 1, "promotions": 1, "demotions": 0,
                                 "since": None}))
    traces = tmp_path / "fallback.jsonl"
    count = {"n": 0}

    def teacher(messages):  # the tools refuse every call until the teacher is asked
        count["n"] = 10**6
        return route(messages)

    support = Toolset("support", _refusing_tools(10**6, count), teacher=teacher, path=traces,
                      policy=policy, retries=1)
    result = support.complete("order 8 please", mode="auto", model=run)
    assert result.success and result.source == "teacher"
    assert [c.name for c in result.tool_calls] == ["lookup_order"]
    block = json.loads(traces.read_text().splitlines()[0])["localdistil"]
    assert len(block["fallback"]["rejected"]) == 2 and block["fallback"]["error"]
    assert "not this time" in result.attempts[0].error  # the model's first answer, refused


def test_auto_keeps_tracing_with_an_adapter_of_other_tools(adapters, tmp_path):
    run = _copy_run(adapters["single"], tmp_path)  # trained for parallel=False
    support = Toolset("support", TOOLS, teacher=route, model=run)
    with pytest.warns(TraceWarning, match="cannot answer for it"):
        result = support.complete("order 8 please", mode="auto")
    assert result.source == "teacher" and support.router_stats().phase == "trace"


# -- the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(adapters):
    """The server in-process on 127.0.0.1 (a free port) serving the ``support`` tool set, and
    as ``repairing`` the adapter that learnt repair turns."""
    from localdistil.serve import create_app, load_served

    app = create_app(load_served([str(adapters["support"]),
                                  f"repairing={adapters['repairing']}"]),
                     api_key=API_KEY, max_batch=4, batch_wait_ms=5)
    with running(app) as url:
        yield url


def _openai_tools(tools):
    """Tool definitions as functioncalming sends them: strict, defaults turned into a choice of
    the ``"__UNSET"`` placeholder (so they differ from the adapter's own schemas)."""
    out = []
    for definition in ToolUnion("x", tools).definitions:
        parameters = json.loads(json.dumps(definition["parameters"]))
        for prop in parameters.get("properties", {}).values():
            if "default" in prop:
                prop.pop("default")
                prop["anyOf"] = [{"type": prop.pop("type")}, {"const": "__UNSET"}]
        parameters["additionalProperties"] = False
        parameters["strict"] = True
        out.append({"type": "function", "function": {**definition, "parameters": parameters,
                                                     "strict": True}})
    return out


def test_the_server_answers_a_tool_set_with_several_tool_calls(server):
    from openai import OpenAI

    with OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=60) as client:
        response = client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "order 7 is late"}],
            tools=_openai_tools(TOOLS), tool_choice="auto")
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert 1 <= len(calls) <= 4
        union = ToolUnion("support", TOOLS)
        union.check([{"name": c.function.name, "arguments": c.function.arguments}
                     for c in calls])  # every call validates
        # the request's tools narrow the grammar: only Escalation can be called
        only = client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "order 7 is late"}],
            tools=_openai_tools([Escalation]))
        assert {c.function.name for c in only.choices[0].message.tool_calls} == {"Escalation"}
        streamed = client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "order 7 is late"}],
            tools=_openai_tools(TOOLS), stream=True)
        pieces: dict[int, dict[str, str]] = {}
        for chunk in streamed:
            for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                entry = pieces.setdefault(delta.index, {"name": "", "arguments": ""})
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
        assert [(p["name"], json.loads(p["arguments"])) for p in pieces.values()] == [
            (c.function.name, json.loads(c.function.arguments)) for c in calls]



def test_the_server_feeds_a_retry_back_to_a_tool_set_that_learnt_repairs(server, adapters):
    """functioncalming retries with the refused calls and the tool's error in the history: a
    tool set that learnt repair turns sees them as training showed them; one that did not
    answers the user's message alone."""
    from openai import OpenAI

    from localdistil.inference.engine import Engine

    refused = {"id": "c1", "type": "function",
               "function": {"name": "Refund", "arguments": '{"order_id":4,"reason":"late"}'}}
    history = [{"role": "user", "content": "refund 4"},
               {"role": "assistant", "content": None, "tool_calls": [refused]},
               {"role": "tool", "tool_call_id": "c1", "content": "Error: order 4 was not late"}]
    repairs = [{"output": '{"tool_calls":[{"name":"Refund","arguments":'
                          '{"order_id":4,"reason":"late"}}]}',
                "error": "Error: order 4 was not late"}]
    support = Toolset("support", TOOLS)
    with OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=60) as client:
        for name, fed in (("repairing", repairs), ("support", [])):
            engine = Engine.for_adapter(adapters[name])
            response = client.chat.completions.create(model=name, messages=history,
                                                      tools=_openai_tools(TOOLS))
            assert response.usage.prompt_tokens == len(support.prompt(engine, "refund 4", fed))
