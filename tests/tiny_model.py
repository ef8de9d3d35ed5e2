"""A tiny random-weight causal LM with a real byte-level tokenizer, built offline in about a second.

Shaped like SmolLM2 where it matters to the code under test: Llama architecture, tied embeddings,
byte-level BPE (any text, so any JSON, round-trips), the same special tokens at the same ids
(``<|endoftext|>`` 0, ``<|im_start|>`` 1, ``<|im_end|>`` 2 = eos = pad) and SmolLM2's chat template
verbatim. Its answers are noise; tests assert on mechanics (shapes, grammar, loss going down).

    from tiny_model import build_tiny_model                  # tests/ is on sys.path under pytest
    model_dir = build_tiny_model(tmp_path / "tiny")        # or once, in a session-scoped fixture

``build_tiny_gguf`` writes the same model as a float32 ``.gguf`` file, for the GGUF conversion path.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 512
STAMP = "tiny-model.json"
VERSION = 1  # bump when the recipe below changes, so cached copies are rebuilt

# SmolLM2-135M-Instruct's chat template, as its tokenizer (and GGUF file) carries it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

_CORPUS = [
    "0123456789 " * 4,
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    '{"a": 133, "b": 539, "result": 71687}',
    '{"a":133,"b":539,"result":71687}',
    '{"name": "Multiply", "items": [1, 2.5, -3e10, true, false, null]}',
    '{"text": "hello \\"world\\"\\n", "path": "C:\\\\tmp", "empty": ""}',
    '{"label": "positive", "score": 0.93, "tags": ["spam", "ham"], "nested": {"ok": true}}',
    "Predict the results of this function:",
    "def three_digit_multiply(a: int, b: int) -> Multiply:",
    '"""Multiply two numbers and return the result."""',
    "Return fn(a=133, b=539)",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "system user assistant function arguments parameters properties required type object",
    "string integer number boolean array description title enum",
    "the quick brown fox jumps over the lazy dog. The result of the function is returned.",
    "classify sentiment of the review: great product, would buy again! terrible, broke at once.",
    "\n\t  ()[]{}<>:;,.!?'\"`~@#$%^&*-_=+|\\/",
]


def build_tiny_tokenizer(corpus: list[str] | None = None, vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE (``vocab_size`` tokens) with SmolLM2's special tokens and chat template,
    trained on ``corpus`` (default: a little of everything the tests write)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 3 if corpus is None else corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>", unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny ``LlamaForCausalLM``, its tokenizer and generation config into ``directory``.

    Deterministic: the same ``seed`` gives the same files. A directory already built with this
    seed (its ``tiny-model.json`` stamp matches) is returned untouched, so callers may cache it.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    stamp = {"version": VERSION, "seed": seed}
    try:
        if json.loads((directory / STAMP).read_text()) == stamp:
            return directory
    except (OSError, ValueError):
        pass
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / STAMP).write_text(json.dumps(stamp) + "\n")  # last: marks the directory complete
    return directory


def build_tiny_gguf(model_dir: Path, path: Path) -> Path:
    """Write the model in ``model_dir`` (from :func:`build_tiny_model`) as a float32 llama GGUF.

    Tensor names, the q/k row permutation and the tokenizer fields follow llama.cpp's
    ``convert_hf_to_gguf.py``, so transformers reads it back into the same model.
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((Path(model_dir) / "config.json").read_text())
    tokenizer = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_token_types([control if token in SPECIAL_TOKENS else normal for token, _ in vocab])
    merges = tokenizer["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for name, array in sorted(load_file(str(Path(model_dir) / "model.safetensors")).items()):
        base, _, suffix = name.rpartition(".")
        if name.endswith("q_proj.weight"):
            array = _permute(array, heads)
        elif name.endswith("k_proj.weight"):
            array = _permute(array, kv_heads)
        writer.add_tensor(names.get_name(base) + "." + suffix, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _permute(weights, heads: int):
    """llama.cpp's rotary layout for q/k rows (transformers undoes it when reading)."""
    shape = weights.shape
    pairs = weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:])
    return pairs.swapaxes(1, 2).reshape(shape)
