"""Dispatch speed on the embedded SmolLM2-135M, measured in one run, printed as ratios.

    python bench/dispatch.py [--adapter RUN_DIR] [--calls 6] [--extract-run runs/extract_order]

Without --adapter, a small multiply adapter is trained first (8 CPU steps, about a minute), so
that both sides below answer with the same fine-tuned weights.

  constrained vs unconstrained   per generated token, batch 1: localdistil's grammar-constrained
                                 decode loop vs ``model.generate`` (greedy, no grammar) producing
                                 the same number of tokens; one model pass per token (the mask
                                 cost alone), and with fast-forward of forced tokens.
                                                                            target <= 1.05x
                                 Then per call: + prompt lookup (copied tokens verified in one
                                 pass), + the KV cache of the prompt prefix every call shares:
                                 the default of dispatch.
  dispatch vs Outlines Generator latency per call, same merged model, adapter and schema:
                                 ``fn(a, b)`` in dispatch mode vs ``outlines.Generator(model,
                                 Multiply)`` given instructor's prompt for the same call.
                                                                            target <= 0.5x
  first-call setup               localdistil's grammar (cold) vs Outlines' Generator construction
                                 plus its first call, per Outlines backend.
  batch 8 vs batch 1             dispatch throughput, calls per second.     target >= 3x
  prompt tokens                  localdistil's compact prompt vs instructor's prompt for the
                                 same call.                                 target <= 50%
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "three_digit_multiply"
sys.path.insert(0, str(EXAMPLE))

from task import Multiply, inputs, multiply  # noqa: E402


def train_adapter(root: Path) -> Path:
    from localdistil import Instructions
    from localdistil.training.recipe import parse_recipe
    from localdistil.training.train import train

    traces = root / "multiply.jsonl"
    traced = Instructions(path=str(traces)).distil(multiply)
    for call in inputs(120, seed=3):
        traced(**call)
    recipe = parse_recipe({
        "model": "smollm2-135m",
        "data": {"train": [str(traces)], "eval_fraction": 0},
        "train": {"max_steps": 8, "batch_size": 8, "learning_rate": 1e-3, "save_steps": 1000},
        "output": {"dir": str(root / "run"), "plot": False},
    })
    return train(recipe).output_dir


def timed(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", help="a multiply training run to use (default: train one)")
    parser.add_argument("--calls", type=int, default=6, help="calls timed per measurement")
    parser.add_argument("--extract-run",
                        help="also compare latency on the extraction example's Order, with "
                        "this extract_order training run (e.g. runs/extract_order)")
    args = parser.parse_args()

    import torch

    from localdistil import Instructions
    from localdistil.inference.engine import Engine
    from localdistil.inference.generate import generate_json
    from localdistil.inference.grammar import JsonGrammar
    from localdistil.inference.prefix import PromptPrefix
    from localdistil.prompts import encode_prompt

    torch.manual_seed(0)
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.adapter) if args.adapter else train_adapter(Path(tmp))
        fn = Instructions().distil(model=str(run), mode="dispatch")(multiply)
        loaded = Engine.for_adapter(run)
        model, tokenizer = loaded.model, loaded.tokenizer
        calls = inputs(args.calls, seed=11)
        schema = Multiply.model_json_schema()

        # -- first-call setup ---------------------------------------------------------------
        start = time.perf_counter()
        grammar = JsonGrammar.for_schema(schema, tokenizer)
        grammar_setup = time.perf_counter() - start
        fn(**calls[0])  # warm: masks of the visited states are cached from here on

        # -- prompt tokens --------------------------------------------------------------------
        spec = fn.spec
        bound = [spec.bind((), c) for c in calls]
        compact = [len(loaded.call_prompt(b)) for b in bound]
        instructor_prompts = instructor_messages(spec, bound)
        full = [len(encode_prompt(tokenizer, m)) for m in instructor_prompts]

        # -- constrained vs unconstrained, batch 1 ---------------------------------------------
        prompt = loaded.call_prompt(bound[0])
        results = generate_json(model, tokenizer, grammar, [prompt], max_new_tokens=64)
        n_tokens = results[0].token_count
        ids = torch.tensor([prompt])

        def unconstrained():
            with torch.inference_mode():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                               min_new_tokens=n_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)

        prefix = PromptPrefix()
        # learns the prefix the prompts share
        generate_json(model, tokenizer, grammar, [loaded.call_prompt(b) for b in bound[:2]],
                      max_new_tokens=64, prefix=prefix)

        def constrained(**options):
            return lambda: generate_json(
                model, tokenizer, grammar, [prompt], max_new_tokens=64, **options
            )

        plain_s = statistics.median(timed(unconstrained, args.calls))
        step_s = statistics.median(
            timed(constrained(fast_forward=False, prompt_lookup=0), args.calls)
        )
        ff_s = statistics.median(timed(constrained(prompt_lookup=0), args.calls))
        lookup_s = statistics.median(timed(constrained(), args.calls))  # the default lookup
        prefix_s = statistics.median(timed(constrained(prefix=prefix), args.calls))

        # -- dispatch latency vs Outlines Generator ---------------------------------------------
        dispatch_s, setups, outlines_latency = versus_outlines(fn, calls, loaded)
        extraction = None
        if args.extract_run:
            import importlib.util

            found = importlib.util.spec_from_file_location(
                "order_task", EXAMPLE.parent / "extract_order" / "task.py"
            )
            order_task = sys.modules["order_task"] = importlib.util.module_from_spec(found)
            found.loader.exec_module(order_task)
            extract = Instructions().distil(model=args.extract_run, mode="dispatch")(
                order_task.extract_order
            )
            order_calls = order_task.inputs(args.calls + 1, seed=11)
            extract(**order_calls[-1])  # warm
            extraction = versus_outlines(
                extract, order_calls[:-1], Engine.for_adapter(args.extract_run)
            )

        # -- batch 8 vs batch 1 ------------------------------------------------------------------
        eight = inputs(8, seed=5)
        one_s = statistics.median(timed(lambda: [fn(**c) for c in eight], 1))
        batch_s = statistics.median(timed(lambda: fn.batch(eight), 2))

    print(f"\nSmolLM2-135M + LoRA (merged), CPU, {torch.get_num_threads()} threads; medians")
    print(f"prompt tokens          localdistil {statistics.fmean(compact):.0f}, "
          f"instructor {statistics.fmean(full):.0f}"
          f"   ratio {statistics.fmean(compact) / statistics.fmean(full):.0%}   (target <= 50%)")
    print(f"per generated token    unconstrained {plain_s / n_tokens * 1000:.1f} ms, constrained "
          f"{step_s / n_tokens * 1000:.1f} ms step by step, "
          f"{ff_s / n_tokens * 1000:.1f} ms with fast-forward")
    print(f"  constrained / unconstrained   {step_s / plain_s:.2f}x step by step, "
          f"{ff_s / plain_s:.2f}x with fast-forward"
          "   (target <= 1.05x)")
    print(f"per call, generation   step by step {step_s * 1000:.0f} ms, "
          f"fast-forward {ff_s * 1000:.0f} ms, "
          f"+ prompt lookup {lookup_s * 1000:.0f} ms, "
          f"+ shared prefix cached ({len(prefix.tokens)} of "
          f"{len(prompt)} prompt tokens) {prefix_s * 1000:.0f} ms (the dispatch default)")
    print(f"first-call setup       localdistil grammar {grammar_setup * 1000:.0f} ms")
    for backend, value in setups.items():
        shown = f"{value:.2f} s" if isinstance(value, float) else value
        print(f"                       Outlines Generator ({backend}) + first call: {shown}")
    print_latency("Multiply", dispatch_s, outlines_latency)
    if extraction:
        print_latency("Order (extract_order)", extraction[0], extraction[2])
    print(f"batch 8 vs batch 1     {8 / batch_s:.2f} vs {8 / one_s:.2f} calls/s   "
          f"ratio {one_s / batch_s:.2f}x   (target >= 3x)")


def instructor_messages(spec, bound: list[dict]) -> list[list[dict]]:
    """instructor's messages for these calls: its system prompt and ``Return `name(args)```."""
    from localdistil.prompts import render_messages

    prompts = [
        render_messages(
            name=spec.name, args=b, style="full", signature=spec.signature, doc=spec.doc
        )
        for b in bound
    ]
    for messages, b in zip(prompts, bound):  # instructor's exact user text
        messages[1]["content"] = f"Return `{spec.name}({', '.join(str(v) for v in b.values())})`"
    return prompts


def versus_outlines(fn, calls: list[dict], loaded) -> tuple[float, dict, dict]:
    """Seconds per call of ``fn`` in dispatch mode, then per Outlines backend: the setup (Generator
    construction + first call) and the seconds per call and valid rate of the same calls given
    instructor's prompt, on the same merged model."""
    import outlines

    model, tokenizer, output_type = loaded.model, loaded.tokenizer, fn.spec.output_type
    dispatch_s = statistics.median(timed(lambda: [fn(**c) for c in calls], 1)) / len(calls)
    messages = instructor_messages(fn.spec, [fn.spec.bind((), c) for c in calls])
    texts = [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
        for m in messages
    ]
    budget = loaded.default_budget
    outlines_model = outlines.from_transformers(model, tokenizer)
    setups, latency = {}, {}
    for backend in ("outlines_core", "xgrammar", "llguidance"):
        try:
            start = time.perf_counter()
            generator = outlines.Generator(outlines_model, output_type, backend=backend)
            generator(texts[0], max_new_tokens=budget)
            setups[backend] = time.perf_counter() - start
            start = time.perf_counter()
            answers = [generator(t, max_new_tokens=budget) for t in texts]
            latency[backend] = (time.perf_counter() - start) / len(texts)
            latency[backend + " valid"] = sum(_valid(output_type, a) for a in answers) / len(texts)
        except Exception as exc:  # a backend that is not installed or fails: say so
            setups[backend] = f"unavailable ({type(exc).__name__}: {str(exc)[:60]})"
    return dispatch_s, setups, latency


def print_latency(title: str, dispatch_s: float, latency: dict) -> None:
    print(f"latency per call, {title}: localdistil dispatch {dispatch_s * 1000:.0f} ms")
    for backend, value in latency.items():
        if backend.endswith(" valid"):
            continue
        print(f"                       Outlines Generator ({backend}) {value * 1000:.0f} ms,"
              f" valid {latency[backend + ' valid']:.0%}   ratio {dispatch_s / value:.2f}x"
              "   (target <= 0.5x)")


def _valid(output_type, text: str) -> bool:
    try:
        output_type.model_validate_json(text)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    main()
