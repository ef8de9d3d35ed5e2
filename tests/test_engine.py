"""The engine and the adapter's identity: one outcome per item, a base model answering a schema
with no adapter, the field order as part of what an adapter was trained for, old manifests, and
a retrained adapter checked before it answers.

The adapter here is written by hand (PEFT on the tiny model, a manifest from the function's
spec), not trained: these tests are about identity and plumbing, not learning."""

from __future__ import annotations

import json
import os
from typing import Literal

import pytest
from pydantic import BaseModel, create_model, field_validator

from localdistil import AdapterMismatchError, FunctionSpec
from localdistil.inference.dispatch import Dispatcher
from localdistil.inference.engine import Engine, Outcome, _outcome
from localdistil.inference.generate import GenerationResult
from localdistil.models.adapter import (
    MANIFEST_NAME,
    Manifest,
    check_compatible,
    read_manifest,
    tokenizer_hash,
    write_manifest,
)
from localdistil.prompts import PROMPT_VERSION


class Flags(BaseModel):
    urgent: bool = False
    kind: Literal["bug", "question"] = "bug"


# the same model with its two fields the other way round
FlagsReordered = create_model(
    "Flags", kind=(Literal["bug", "question"], "bug"), urgent=(bool, False)
)


def triage(text: str) -> Flags:
    """Triage a ticket."""
    return Flags()


def _spec(output_type: type[BaseModel]) -> FunctionSpec:
    def triage(text: str) -> output_type:  # type: ignore[valid-type]
        """Triage a ticket."""

    triage.__annotations__["return"] = output_type
    return FunctionSpec.from_function(triage)


def _manifest_for(spec: FunctionSpec, tokenizer, model_dir) -> Manifest:
    from localdistil.models.resolve import model_content_hash

    return Manifest(
        base_model=str(model_dir), base_model_path=str(model_dir),
        base_model_hash=model_content_hash(model_dir), tokenizer_hash=tokenizer_hash(tokenizer),
        function=spec.qualname, name=spec.name, signature=spec.signature, doc=spec.doc,
        fingerprint=spec.fingerprint, output_schema=spec.output_schema,
        schema_hash=spec.schema_hash,
        prompt_style="compact", prompt_version=PROMPT_VERSION, max_output_tokens=12, recipe={},
    )


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """An untrained LoRA adapter on the tiny model, with the manifest of ``triage``."""
    from peft import LoraConfig, get_peft_model

    from localdistil.models.resolve import load_causal_lm, load_tokenizer

    directory = tmp_path_factory.mktemp("engine") / "adapter"
    tokenizer = load_tokenizer(tiny_model_dir)
    model = get_peft_model(load_causal_lm(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_manifest(directory, _manifest_for(_spec(Flags), tokenizer, tiny_model_dir))
    return directory


def _rewrite_manifest(directory, **changes) -> None:
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest.update(changes)
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


# -- identity ----------------------------------------------------------------------------------


def test_the_schema_hash_keeps_the_field_order():
    assert list(Flags.model_json_schema()["properties"]) == ["urgent", "kind"]
    assert list(FlagsReordered.model_json_schema()["properties"]) == ["kind", "urgent"]
    assert _spec(Flags).schema_hash != _spec(FlagsReordered).schema_hash
    assert _spec(Flags).fingerprint != _spec(FlagsReordered).fingerprint


def test_a_reordered_field_is_a_mismatch_that_names_the_field_order(adapter):
    with pytest.raises(
        AdapterMismatchError,
        match=r"field order of Flags changed from \(urgent, kind\) to \(kind, urgent\)",
    ) as caught:
        Dispatcher(_spec(FlagsReordered), adapter)
    assert "field_order" in caught.value.changes
    # the function it was trained for loads
    assert Dispatcher(_spec(Flags), adapter).path == adapter


def test_an_old_manifest_is_checked_from_the_schema_it_stores(adapter, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for item in adapter.iterdir():
        (old / item.name).write_bytes(item.read_bytes())
    # version 1 hashed the schema with sorted keys: a hash no spec computes any more
    _rewrite_manifest(old, version=1, schema_hash="0" * 64, fingerprint="1" * 64)
    manifest = read_manifest(old)
    assert check_compatible(manifest, _spec(Flags)) == {}
    assert "field_order" in check_compatible(manifest, _spec(FlagsReordered))

    _rewrite_manifest(old, output_schema=None)
    with pytest.raises(AdapterMismatchError, match="records no output schema.*Train it again"):
        check_compatible(read_manifest(old), _spec(Flags))


def test_a_retrained_adapter_is_checked_before_it_answers(adapter, tmp_path):
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for item in adapter.iterdir():
        (swapped / item.name).write_bytes(item.read_bytes())
    dispatcher = Dispatcher(_spec(Flags), swapped)
    assert dispatcher.engine.manifest.name == "triage"

    # retrained for a version of the function whose fields are in the other order
    reordered = _spec(FlagsReordered)
    _rewrite_manifest(
        swapped,
        output_schema=reordered.output_schema,
        schema_hash=reordered.schema_hash,
        fingerprint=reordered.fingerprint,
    )
    stat = (swapped / MANIFEST_NAME).stat()
    os.utime(swapped / MANIFEST_NAME, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    for _ in range(2):  # and on every call after, not only the first
        with pytest.raises(AdapterMismatchError, match="field order"):
            dispatcher.answer_many([{"text": "it crashes"}])


# -- the engine ----------------------------------------------------------------------------


def test_a_base_model_answers_a_schema_without_an_adapter(tiny_model_dir):
    engine = Engine.for_base(str(tiny_model_dir))
    assert engine.manifest is None and engine.default_budget is None
    assert Engine.for_base(str(tiny_model_dir)) is engine  # loaded once per process
    prompts = [engine.encode([{"role": "user", "content": f"ticket {n}"}]) for n in range(3)]
    outcomes = engine.answer(prompts, output_type=Flags, max_new_tokens=24)
    assert [o.status for o in outcomes] == ["ok"] * 3
    assert all(isinstance(o.value, Flags) and o.text == o.value.model_dump_json() for o in outcomes)
    assert all(
        o.prompt_tokens == len(p) and o.completion_tokens > 0 for o, p in zip(outcomes, prompts)
    )
    with pytest.raises(ValueError, match="base model: pass max_new_tokens"):
        engine.answer(prompts, output_type=Flags)
    with pytest.raises(ValueError, match="base model"):
        engine.call_prompt({"text": "x"})


def test_each_item_of_a_batch_gets_its_own_outcome(tiny_model_dir):
    seen = []

    class FirstRefused(BaseModel):
        urgent: bool
        kind: Literal["bug", "question"]

        @field_validator("kind")
        @classmethod
        def refuse_the_first(cls, value: str) -> str:
            seen.append(value)
            if len(seen) == 1:
                raise ValueError("refused")
            return value

    engine = Engine.for_base(str(tiny_model_dir))
    prompts = [engine.encode([{"role": "user", "content": f"ticket {n}"}]) for n in range(3)]
    outcomes = engine.answer(prompts, output_type=FirstRefused, max_new_tokens=24)
    assert [o.status for o in outcomes] == ["invalid", "ok", "ok"]
    assert outcomes[0].error == "kind: Value error, refused" and outcomes[0].value is None
    assert json.loads(outcomes[0].text)  # the refused answer is kept, complete

    seen.clear()
    retried = engine.answer(prompts, output_type=FirstRefused, max_new_tokens=24, retries=1)
    assert [o.status for o in retried] == ["ok"] * 3
    assert [o.attempts for o in retried] == [2, 1, 1]


def test_an_unfinished_answer_is_a_budget_outcome_with_its_partial_text():
    partial = GenerationResult(text='{"urgent":tr', token_ids=(1, 2, 3), finished=False)
    assert _outcome(partial, Flags, 7) == Outcome("budget", '{"urgent":tr', prompt_tokens=7,
                                                  completion_tokens=3)
    whole = GenerationResult(text='{"urgent":true,"kind":"bug"}', token_ids=(1,), finished=True)
    assert _outcome(whole, None, 1).value == {"urgent": True, "kind": "bug"}  # no type: the JSON
