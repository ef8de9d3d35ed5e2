"""The main job, end to end on the embedded default model (``make demo``).

Today: trace calls of the three-digit multiply and show the records and their summary.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACES = Path("traces/three_digit_multiply.jsonl")


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def main() -> None:
    (ROOT / TRACES).unlink(missing_ok=True)
    step("1. trace 200 calls of multiply(a, b) -> Multiply")
    run("examples/three_digit_multiply/trace.py", "--n", "200", "--out", str(TRACES))
    step("the first record it wrote")
    first = json.loads((ROOT / TRACES).read_text().splitlines()[0])
    print(json.dumps(first, indent=2))
    step("2. what the trace file holds")
    run("-m", "localdistil", "records", "stats", str(TRACES))


if __name__ == "__main__":
    main()
