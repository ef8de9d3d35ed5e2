"""How well the shipped examples distil into the embedded SmolLM2-135M, as one table.

    python bench/quality.py [--examples three_digit_multiply extract_order normalize_quantity]
                            [--limit N] [--batch-size 8]

For each example whose training run exists (``output.dir`` of ``recipes/<example>.yaml``; make
it with the example's ``trace.py`` then ``python -m localdistil train recipes/<example>.yaml``),
the run's held-out calls (the recipe's ``eval`` split, the same one ``train`` evaluated on) are
dispatched twice under the same grammar and prompt:

  trained     the run's adapter;
  untrained   the same adapter with its LoRA ``B`` matrices zeroed, so it computes exactly the
              base model: what the grammar alone gets from SmolLM2 without distillation.

Printed per example and model: held-out calls, exact match, valid outputs, each field's
accuracy, and for ``Multiply.result`` the per-digit accuracy (digits aligned from the right; a
missing or extra digit counts as wrong). Targets (issue 5): exact >= 95 % on extraction and
normalisation, valid 100 % everywhere.

    python bench/quality.py --curve 100,300,1000 [--examples normalize_quantity extract_order]
                                                 (the default; three_digit_multiply too)

How many calls to trace: for each example, trace the largest number of calls (seed 0) and 50
held-out calls (seed 1, none of them among the traced ones), then for each number N train with
the defaults (a recipe naming only model, data and output; ``data.max_records: N``) on the first
N distinct calls, and print the held-out exact match of the kept version against N, with the
steps, training time and time to the gate (95 %). Every N is judged on the same held-out calls.
Runs train one after another, each in a fresh process: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("three_digit_multiply", "extract_order", "normalize_quantity", "triage_ticket",
            "support_desk")


def untrained_copy(adapter: Path, into: Path) -> Path:
    """A copy of ``adapter`` whose LoRA update is zero: the base model, same grammar and prompt."""
    from safetensors.torch import load_file, save_file

    copy = into / "adapter"
    shutil.copytree(adapter, copy)
    weights = load_file(str(copy / "adapter_model.safetensors"))
    zeroed = {
        name: tensor.zero_() if "lora_B" in name else tensor for name, tensor in weights.items()
    }
    save_file(zeroed, str(copy / "adapter_model.safetensors"), metadata={"format": "pt"})
    return copy


def digit_accuracy(samples: list[dict], field: str) -> float:
    """Share of the expected ``field`` digits reproduced in place, aligned from the right."""
    right = total = 0
    for sample in samples:
        expected = str(sample["expected"][field])
        got = str((sample["got"] or {}).get(field, ""))
        width = max(len(expected), len(got))
        expected, got = expected.rjust(width), got.rjust(width)
        total += width
        right += sum(e == g for e, g in zip(expected, got))
    return right / total if total else 0.0


def unordered_exact(samples: list[dict]) -> float:
    """Share of tool-set answers holding exactly the expected calls, in any order."""
    from localdistil.trace.toolset import same_calls

    return sum(same_calls(s["expected"], s["got"]) for s in samples) / max(len(samples), 1)


def measure(example: str, limit: int | None, batch_size: int) -> list[dict] | str:
    """The example's rows of the table, or why it has none."""
    from localdistil.errors import AdapterError
    from localdistil.models.adapter import adapter_dir
    from localdistil.training.dataset import select_records
    from localdistil.training.evaluate import evaluate
    from localdistil.training.recipe import load_recipe

    recipe_path = ROOT / "recipes" / f"{example}.yaml"
    recipe = load_recipe(recipe_path)
    run = ROOT / recipe.output.dir
    try:
        trained = adapter_dir(run)  # the run's promoted version
    except AdapterError as exc:
        return (f"no promoted version at {run.relative_to(ROOT)} ({exc}); train one: python "
                f"examples/{example}/trace.py && python -m localdistil train "
                f"recipes/{example}.yaml")
    recipe = load_recipe(run / "recipe.yaml")  # the settings the run was trained with
    held_out = [r for r in select_records(recipe).eval if r.args is not None][:limit]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, adapter in (
            ("trained", trained),
            ("untrained", untrained_copy(trained, Path(tmp))),
        ):
            report = evaluate(adapter, held_out, batch_size=batch_size)
            row = {"example": example, "model": label, "calls": report.examples,
                   "exact": report.exact_match, "valid": report.valid_rate, "fields": report.fields}
            if example == "three_digit_multiply":
                row["digits"] = digit_accuracy(report.samples, "result")
            if example == "support_desk":  # parallel calls: their order carries no meaning
                row["exact"] = unordered_exact(report.samples)
            rows.append(row)
            print(f"  {example} {label}: exact {report.exact_match:.1%}, "
                  f"valid {report.valid_rate:.1%}",
                  file=sys.stderr, flush=True)
    return rows


CURVE_HELD_OUT = 50


def curve(example: str, sizes: list[int]) -> list[dict]:
    """Held-out exact match of the defaults trained on each number of traced calls."""
    from training_runs import task_calls, trace, train, write_recipe

    function, calls = task_calls(example, max(sizes), seed=0)
    seen = {json.dumps(call, sort_keys=True) for call in calls}
    held_out = [call for call in task_calls(example, 2 * CURVE_HELD_OUT, seed=1)[1]
                if json.dumps(call, sort_keys=True) not in seen][:CURVE_HELD_OUT]
    base = ROOT / "traces" / "curve"
    trace(function, calls, base / f"{example}.jsonl")
    trace(function, held_out, base / f"{example}.held_out.jsonl")
    rows = []
    for size in sizes:
        data = {"train": [f"traces/curve/{example}.jsonl"],
                "eval": [f"traces/curve/{example}.held_out.jsonl"], "max_records": size}
        recipe = write_recipe(ROOT / "runs" / "curve" / f"{example}-{size}.yaml", data,
                              ROOT / "runs" / "curve" / f"{example}-{size}")
        rows.append({"example": example, "calls": size, **train(recipe)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def print_curve(rows: list[dict]) -> None:
    from training_runs import gate_text

    print("| example | traced calls | held-out exact | valid | steps | training | "
          "time to gate (95 %) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['example']} | {row['calls']} | {row['error']} | | | | |")
            continue
        print(f"| {row['example']} | {row['calls']} | {row['exact']:.1%} | {row['valid']:.1%} "
              f"| {row['steps']} | {row['train_min']:.1f} min | {gate_text(row)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=list(EXAMPLES), choices=EXAMPLES)
    parser.add_argument("--limit", type=int, help="held-out calls per example (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--curve", metavar="N,N,...",
                        help="train with the defaults on each number of traced calls instead, "
                             "and print held-out exact match against it")
    args = parser.parse_args()
    os.chdir(ROOT)  # recipes name their data and output relative to the repository root
    if args.curve:
        sizes = sorted({int(size) for size in args.curve.split(",")})
        examples = (args.examples if "--examples" in sys.argv
                    else ["normalize_quantity", "extract_order"])
        if "support_desk" in examples:
            parser.error("--curve trains functions; support_desk is a tool set")
        print_curve([row for example in examples for row in curve(example, sizes)])
        return

    table = ["| example | model | held-out calls | exact match | valid | fields |",
             "| --- | --- | --- | --- | --- | --- |"]
    notes = []
    for example in args.examples:
        rows = measure(example, args.limit, args.batch_size)
        if isinstance(rows, str):
            notes.append(f"{example}: {rows}")
            continue
        for row in rows:
            fields = ", ".join(f"{name} {rate:.1%}" for name, rate in row["fields"].items())
            if "digits" in row:
                fields += f"; result digits {row['digits']:.1%}"
            table.append(f"| {row['example']} | {row['model']} | {row['calls']} "
                         f"| {row['exact']:.1%} | {row['valid']:.1%} | {fields} |")
    command = "python bench/quality.py " + " ".join(sys.argv[1:])
    print(f"\n{command.strip()}\n")
    print("\n".join(table))
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
