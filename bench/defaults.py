"""What a recipe naming only ``model``, ``data`` and ``output`` gets: the training defaults,
measured on functions they were not tuned on, and on the examples.

    python bench/defaults.py [--tasks route_ticket cast_scene shipping_label normalize_quantity
                              extract_order] [--calls 400] [--set train.learning_rate=2e-4 ...]

For each task: trace ``--calls`` calls (seed 0) into ``traces/defaults/<task>.jsonl``, write the
recipe ``model: smollm2-135m`` + ``data: {train: [...]}`` + ``output: {dir: runs/defaults/<task>}``
(plus any ``--set`` overrides, e.g. the old defaults, to compare), run ``python -m localdistil
train`` in a fresh process, and print one row from the version's ``metrics.json``: distinct
records, held-out calls, steps (and whether training stopped early), training time, time to
the gate (95 % exact by default), and the kept version's held-out exact match and valid rate.

The unseen functions are in ``bench/unseen_tasks.py``; ``normalize_quantity`` and
``extract_order`` are the examples (their tuned recipes' figures are in ``recipes/``). Run it
alone on the machine: training time is wall time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training_runs import (
    EXAMPLES,
    ROOT,
    UNSEEN,
    gate_text,
    task_calls,
    trace,
    train,
    write_recipe,
)


def run(task: str, n: int, overrides: list[str]) -> dict:
    """Trace ``n`` calls of ``task``, train on them with the defaults, summarise the version."""
    traces = ROOT / "traces" / "defaults" / f"{task}.jsonl"
    trace(*task_calls(task, n), traces)
    recipe = write_recipe(ROOT / "runs" / "defaults" / f"{task}.yaml",
                          {"train": [str(traces.relative_to(ROOT))]},
                          ROOT / "runs" / "defaults" / task)
    return {"task": task, **train(recipe, overrides)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=[*UNSEEN, *EXAMPLES[:2]],
                        choices=[*UNSEEN, *EXAMPLES])
    parser.add_argument("--calls", type=int, default=400, help="calls traced per task")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every task (e.g. the old defaults)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    for task in args.tasks:
        rows.append(run(task, args.calls, args.set))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| task | train / held-out | steps (of max) | training | time to gate | "
          "held-out exact | valid |\n| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['task']} | {row['error']} |")
            continue
        early = ", stopped early" if row["stopped_early"] else ""
        print(f"| {row['task']} | {row['train']} / {row['held_out']} | {row['steps']} "
              f"(of {row['max_steps']}{early}) | {row['train_min']:.1f} min | {gate_text(row)} | "
              f"{row['exact']:.1%} | {row['valid']:.1%} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
