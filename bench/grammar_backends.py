"""Constrained JSON decoding on the embedded SmolLM2 model, measured in one run.

    python bench/grammar_backends.py [--model smollm2-135m] [--repeats 3] [--threads N]
                                     [--skip-outlines]

Prints:
  1. first-call setup per backend: localdistil's grammar (outlines_core Index + cached masks),
     ``outlines.Generator`` with its default backend (construction, then its first and second
     call: the first compiles mask kernels with torch.compile), xgrammar used directly with
     ``any_whitespace=False`` (tokenizer info, compiler, schema; and the canonical regex);
  2. per-token mask cost per backend, replaying the same token sequences against random logits;
  3. constrained vs unconstrained per-token decode cost at batch 1, the same forward calls
     (target <= 1.05x);
  4. the speed-up from fast-forwarding forced tokens on Multiply(a:int, b:int, result:int);
  5. batch-8 vs batch-1 throughput.

The machine is shared: the load average is printed at the start and the end, and every ratio is
taken between runs interleaved in this process (medians of ``--repeats``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from pydantic import BaseModel, Field

from localdistil.inference.generate import _choose, generate_json
from localdistil.inference.grammar import (
    BACKENDS,
    DEFAULT_BACKEND,
    ENGINES,
    JsonGrammar,
    canonical_regex,
)
from localdistil.inference.tokens import TokenTable


class Multiply(BaseModel):
    a: int
    b: int
    result: int


class Address(BaseModel):
    street: str
    city: str
    postcode: str | None = None


class Person(BaseModel):
    name: str
    age: int
    height_m: float
    emails: list[str]
    address: Address
    member: bool


class Essay(BaseModel):
    text: str


EXAMPLES = {
    "Multiply": Multiply(a=133, b=539, result=71687),
    "Person": Person(name='Ada "the first" Lovelace', age=36, height_m=1.65,
                     emails=["ada@example.org"],
                     address=Address(street="12 St James's Square", city="London"), member=True),
}
QUESTIONS = ["Multiply 133 by 539.", "What is 12 times 7?", "Compute 250 * 4.",
             "Multiply 999 by 999.", "What is 48 times 52?", "Compute 7 * 6.",
             "Multiply 321 by 123.", "What is 15 times 15?"]


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def chat(tokenizer, text: str) -> list[int]:
    messages = [{"role": "system", "content": "Reply with JSON only."},
                {"role": "user", "content": text}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def load(reference: str):
    from localdistil.models.resolve import load_causal_lm, load_tokenizer, resolve_model

    path = resolve_model(reference)
    return load_causal_lm(path, dtype="float32"), load_tokenizer(path)


# --- 1 + 2: the backends --------------------------------------------------------------------


class Heavy(BaseModel):
    """What makes an eager automaton costly: floats and a bounded string."""

    series: list[list[float]]
    low: float
    high: float
    mean: float
    label: str = Field(max_length=200)


def localdistil_backend(tokenizer, replays, backend: str) -> dict:
    import numpy as np

    out = {}
    fresh = type(tokenizer).from_pretrained(tokenizer.name_or_path)  # nothing cached for it yet
    out["first_grammar_s"], _ = timed(
        JsonGrammar.for_schema, Multiply.model_json_schema(), fresh, backend=backend
    )
    seconds, table = timed(TokenTable, fresh)
    out["table_s"] = seconds + timed(ENGINES[backend].vocabulary, table)[0]  # the tokenizer's part
    # the schema's part
    for name, model_type in (("Multiply", Multiply), ("Person", Person), ("Heavy", Heavy)):
        out[f"grammar_{name}_s"], _ = timed(
            JsonGrammar, model_type.model_json_schema(), table, backend
        )
    grammar = JsonGrammar.for_schema(Person.model_json_schema(), tokenizer, backend=backend)
    base = np.random.default_rng(0).standard_normal(grammar.table.size).astype(np.float32)
    # the first pass fills any per-state caches, the second reads them
    for label in ("cold", "warm"):
        steps = []
        for tokens in replays["Person"]:
            cursor = grammar.cursor()
            for token in tokens:
                scores = base.copy()  # generate_json gets a fresh logits row every step
                start = time.perf_counter()
                _choose(scores, *cursor.allowed(), 0.0, None)
                cursor.advance(token)
                cursor.is_terminal()
                cursor._forced_bytes()  # what take_forced asks the engine
                steps.append(time.perf_counter() - start)
        out[f"step_{label}_ms"] = 1e3 * statistics.median(steps)
        out[f"step_{label}_mean_ms"] = 1e3 * statistics.mean(steps)
    return out


def xgrammar_backend(tokenizer, replays) -> dict:
    import torch
    import xgrammar as xgr

    out = {}
    out["tokenizer_info_s"], info = timed(xgr.TokenizerInfo.from_huggingface, tokenizer,
                                          vocab_size=len(tokenizer))
    out["compiler_s"], compiler = timed(xgr.GrammarCompiler, info, cache_enabled=False)
    for name, model_type in (("Multiply", Multiply), ("Person", Person), ("Heavy", Heavy)):
        out[f"schema_{name}_s"], compiled = timed(
            compiler.compile_json_schema, model_type.model_json_schema(),
            any_whitespace=False, separators=(",", ":"),
        )
    out["canonical_regex_Person_s"], _ = timed(
        compiler.compile_regex, canonical_regex(Person.model_json_schema())
    )
    out["canonical_regex_Heavy_s"], _ = timed(
        compiler.compile_regex, canonical_regex(Heavy.model_json_schema())
    )
    compiled = compiler.compile_json_schema(
        Person.model_json_schema(), any_whitespace=False, separators=(",", ":")
    )
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    base = torch.randn(1, info.vocab_size)
    steps = []
    for tokens in replays["Person"]:
        matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        for token in tokens:
            logits = base.clone()
            start = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            logits.argmax(dim=-1)
            if not matcher.accept_token(token):
                raise RuntimeError(f"xgrammar refused token {token} of the canonical text")
            steps.append(time.perf_counter() - start)
    out["step_ms"] = 1e3 * statistics.median(steps)
    out["step_mean_ms"] = 1e3 * statistics.mean(steps)
    return out


def outlines_backend(model, tokenizer, replays) -> dict:
    import outlines
    import torch

    out = {}
    wrapped = outlines.from_transformers(model, tokenizer)
    out["generator_s"], generator = timed(outlines.Generator, wrapped, Multiply)
    out["generator_again_s"], _ = timed(outlines.Generator, wrapped, Multiply)
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": "Reply with JSON only."},
                                            {"role": "user", "content": QUESTIONS[0]}],
                                           add_generation_prompt=True, tokenize=False)
    out["first_call_s"], text = timed(generator, prompt, max_new_tokens=40)
    out["second_call_s"], text = timed(generator, prompt, max_new_tokens=40)
    out["text"] = text
    processor = outlines.Generator(wrapped, Person).logits_processor
    base = torch.randn(1, model.config.vocab_size)
    steps = []
    for tokens in replays["Person"]:
        processor.reset()
        ids = torch.tensor([chat(tokenizer, "Describe Ada.")])
        for token in tokens:
            logits = base.clone()
            start = time.perf_counter()
            processor(ids, logits).argmax(dim=-1)
            steps.append(time.perf_counter() - start)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    out["step_first_ms"] = 1e3 * steps[0]
    out["step_ms"] = 1e3 * statistics.median(steps[1:])
    out["step_mean_ms"] = 1e3 * statistics.mean(steps[1:])
    return out


# --- 3-5: decoding --------------------------------------------------------------------------


def plain_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Unconstrained greedy decoding with the same forward calls as generate_json."""
    import torch

    ids, cache, out_ids = torch.tensor([prompt]), None, []
    attention = torch.ones_like(ids)
    positions = torch.arange(len(prompt))[None]
    with torch.inference_mode():
        for _ in range(steps):
            out = model(input_ids=ids, attention_mask=attention, position_ids=positions,
                        cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            token = int(out.logits[:, -1, :].float().argmax(dim=-1))
            out_ids.append(token)
            ids = torch.tensor([[token]])
            attention = torch.cat([attention, torch.ones((1, 1), dtype=attention.dtype)], dim=1)
            positions = positions[:, -1:] + 1
    return out_ids


def decode_overhead(model, tokenizer, repeats: int, tokens: int = 48) -> dict:
    grammar = JsonGrammar.for_schema(Essay.model_json_schema(), tokenizer)
    prompt = chat(tokenizer, "Write a long essay about the sea, as JSON with one field, text.")
    generate_json(model, tokenizer, grammar, [prompt], max_new_tokens=4)  # warm caches
    plain_greedy(model, prompt, 4)
    constrained, unconstrained = [], []
    for _ in range(repeats):
        seconds, (result,) = timed(generate_json, model, tokenizer, grammar, [prompt],
                                   max_new_tokens=tokens, fast_forward=False)
        if result.token_count != tokens:
            raise RuntimeError(
                f"the essay finished early ({result.token_count} tokens); raise the budget"
            )
        constrained.append(seconds / tokens)
        seconds, _ = timed(plain_greedy, model, prompt, tokens)
        unconstrained.append(seconds / tokens)
    c, u = statistics.median(constrained), statistics.median(unconstrained)
    return {"constrained_ms": 1e3 * c, "unconstrained_ms": 1e3 * u, "ratio": c / u}


def fast_forward(model, tokenizer, repeats: int, backend: str) -> dict:
    grammar = JsonGrammar.for_schema(Multiply.model_json_schema(), tokenizer, backend=backend)
    prompts = [chat(tokenizer, question) for question in QUESTIONS[:3]]
    generate_json(model, tokenizer, grammar, prompts[:1], max_new_tokens=40)
    on, off, same, counts = [], [], True, None
    for _ in range(repeats):
        for prompt in prompts:
            seconds, (fast,) = timed(generate_json, model, tokenizer, grammar, [prompt],
                                     max_new_tokens=40)
            on.append(seconds)
            seconds, (slow,) = timed(generate_json, model, tokenizer, grammar, [prompt],
                                     max_new_tokens=40, fast_forward=False)
            off.append(seconds)
            same = same and fast.token_ids == slow.token_ids
            counts = (fast.token_count, fast.forced_count, fast.text)
    return {"on_s": statistics.median(on), "off_s": statistics.median(off),
            "speedup": statistics.median(off) / statistics.median(on), "same_tokens": same,
            "tokens": counts[0], "forced": counts[1], "example": counts[2]}


def batching(model, tokenizer, repeats: int) -> dict:
    grammar = JsonGrammar.for_schema(Multiply.model_json_schema(), tokenizer)
    prompts = [chat(tokenizer, question) for question in QUESTIONS]
    batch_s, single_s, same = [], [], True
    for _ in range(repeats):
        seconds, batched = timed(
            generate_json, model, tokenizer, grammar, prompts, max_new_tokens=40
        )
        batch_s.append(seconds)
        start = time.perf_counter()
        alone = [
            generate_json(model, tokenizer, grammar, [prompt], max_new_tokens=40)[0]
            for prompt in prompts
        ]
        single_s.append(time.perf_counter() - start)
        same = same and [r.token_ids for r in batched] == [r.token_ids for r in alone]
    tokens = sum(r.token_count for r in batched)
    return {"tokens": tokens, "batch8_tok_s": tokens / statistics.median(batch_s),
            "batch1_tok_s": tokens / statistics.median(single_s),
            "speedup": statistics.median(single_s) / statistics.median(batch_s),
            "same_tokens": same,
            "all_valid": all(r.finished for r in batched)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m",
                        help="model reference (alias, directory, .gguf)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-outlines", action="store_true", help="leave out outlines.Generator")
    parser.add_argument("--skip-xgrammar", action="store_true", help="leave out xgrammar")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); "
                        "1 steadies timings on a busy machine")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    seconds, (model, tokenizer) = timed(load, args.model)
    print(f"model loaded in {seconds:.1f} s; vocabulary {len(tokenizer)}")
    replays = {name: [tokenizer.encode(example.model_dump_json(), add_special_tokens=False)]
               for name, example in EXAMPLES.items()}
    replay_steps = len(replays["Person"][0])

    print(f"\n1-2. setup and per-token mask cost (Person schema, {replay_steps}-token replay, "
          "random logits)")
    mine = {}
    for backend in BACKENDS:
        mine[backend] = m = localdistil_backend(tokenizer, replays, backend)
        print(f"  localdistil, {backend}{' (default)' if backend == DEFAULT_BACKEND else ''}: "
              f"first grammar {m['first_grammar_s'] * 1e3:.0f} ms, "
              f"of which the tokenizer's part {m['table_s'] * 1e3:.0f} ms "
              f"(once per tokenizer); then per schema: "
              f"Multiply {m['grammar_Multiply_s'] * 1e3:.1f} ms, "
              f"Person {m['grammar_Person_s'] * 1e3:.1f} ms, "
              f"Heavy {m['grammar_Heavy_s'] * 1e3:.1f} ms; per token "
              f"{m['step_cold_ms']:.3f} ms cold / {m['step_warm_ms']:.3f} ms warm "
              f"(means {m['step_cold_mean_ms']:.3f} / {m['step_warm_mean_ms']:.3f})")
    if not args.skip_xgrammar:
        try:
            xg = xgrammar_backend(tokenizer, replays)
        except ImportError:
            print("  xgrammar: not installed (pip install xgrammar)")
        else:
            print(f"  xgrammar direct, any_whitespace=False: "
                  f"tokenizer info {xg['tokenizer_info_s'] * 1e3:.0f} ms, "
                  f"compiler {xg['compiler_s'] * 1e3:.0f} ms, "
                  f"schema Multiply {xg['schema_Multiply_s'] * 1e3:.1f} ms, "
                  f"Person {xg['schema_Person_s'] * 1e3:.1f} ms, "
                  f"Heavy {xg['schema_Heavy_s'] * 1e3:.1f} ms; our canonical "
                  f"regex: Person {xg['canonical_regex_Person_s'] * 1e3:.0f} ms, Heavy "
                  f"{xg['canonical_regex_Heavy_s'] * 1e3:.0f} ms; per token {xg['step_ms']:.3f} ms "
                  f"(mean {xg['step_mean_ms']:.3f})")
    if not args.skip_outlines:
        ol = outlines_backend(model, tokenizer, replays)
        print(f"  outlines.Generator (default backend): construction {ol['generator_s']:.2f} s "
              f"(again {ol['generator_again_s']:.2f} s), "
              f"first call {ol['first_call_s']:.2f} s, "
              f"second call {ol['second_call_s']:.2f} s; "
              f"per token {ol['step_ms']:.3f} ms (first {ol['step_first_ms']:.0f} ms, "
              f"mean {ol['step_mean_ms']:.3f}); text {ol['text']!r}")

    print("\n3. constrained vs unconstrained decoding, batch 1, one token per forward pass")
    overhead = decode_overhead(model, tokenizer, args.repeats)
    print(f"  {overhead['constrained_ms']:.1f} ms vs "
          f"{overhead['unconstrained_ms']:.1f} ms per token: "
          f"ratio {overhead['ratio']:.3f} (target <= 1.05)")

    print("\n4. fast-forwarding forced tokens, Multiply, batch 1, greedy")
    ff = {}
    for backend in BACKENDS:
        ff[backend] = f = fast_forward(model, tokenizer, args.repeats, backend)
        print(f"  {backend}: {f['off_s'] * 1e3:.0f} ms -> {f['on_s'] * 1e3:.0f} ms per call: "
              f"{f['speedup']:.2f}x "
              f"faster; {f['forced']} of {f['tokens']} tokens forced; same tokens as step by step: "
              f"{f['same_tokens']}; e.g. {f['example']}")

    print("\n5. batching, Multiply, 8 prompts, greedy, fast-forward on")
    batch = batching(model, tokenizer, args.repeats)
    print(f"  batch 8 {batch['batch8_tok_s']:.1f} tok/s vs "
          f"batch 1 {batch['batch1_tok_s']:.1f} tok/s: "
          f"{batch['speedup']:.2f}x; same tokens as one at a time: {batch['same_tokens']}; "
          f"all valid: {batch['all_valid']}")
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    print(json.dumps({"ours": mine, "decode": overhead, "fast_forward": ff,
                      "batching": batch}, default=str))


if __name__ == "__main__":
    main()
