"""Cost per call of tracing, measured in one run, printed as ratios.

    python bench/trace_overhead.py [--calls 20000]

Compares, on the same function and arguments:
  bare         the undecorated function
  hand         the function plus a hand-written ``logger.info(json.dumps(record))`` of the
               same record (messages, functions schema, structured block), through a
               logging.FileHandler; the schema is computed once, as a careful user would
  traced       ``@Instructions(log_handlers=[FileHandler]).distil``: the same sink as ``hand``
  traced-path  ``@Instructions(path=...).distil``: the first-class JSONL sink

Target: traced costs at most 2x hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from localdistil import Instructions

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent / "examples" / "three_digit_multiply")
)

from task import Multiply, multiply  # noqa: E402


def file_logger(path: Path, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.FileHandler(path))
    return logger


def hand_written(logger: logging.Logger):
    schema = Multiply.model_json_schema()
    system = (
        "Predict the results of this function:\n\n"
        "def multiply(a: int, b: int) -> Multiply\n"
        '"""\nMultiply two three-digit numbers.\n"""'
    )

    def traced(a: int, b: int) -> Multiply:
        start = time.perf_counter()
        result = multiply(a, b)
        output = result.model_dump(mode="json")
        record = {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Return multiply(a={a}, b={b})"},
                {
                    "role": "assistant",
                    "function_call": {"name": "Multiply", "arguments": result.model_dump_json()},
                },
            ],
            "functions": [
                {"name": "Multiply", "description": "The result of multiply.", "parameters": schema}
            ],
            "localdistil": {
                "version": 1, "function": "bench:multiply", "args": {"a": a, "b": b},
                "output": output,
                "id": str(uuid.uuid4()), "ts": datetime.now(timezone.utc).isoformat(),
                "duration_s": time.perf_counter() - start,
            },
        }
        logger.info(json.dumps(record))
        return result

    return traced


def per_call_seconds(fn, calls: int, repeats: int = 5) -> float:
    """Best of ``repeats`` runs of ``calls`` calls: the least disturbed by other processes."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            fn(100 + i % 900, 999 - i % 900)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        variants = {
            "bare": multiply,
            "hand": hand_written(file_logger(tmp_path / "hand.jsonl", "bench.hand")),
            "traced": Instructions(
                name="bench", log_handlers=[logging.FileHandler(tmp_path / "traced.jsonl")]
            ).distil(multiply),
            "traced-path": Instructions(
                name="bench", path=str(tmp_path / "path.jsonl")
            ).distil(multiply),
        }
        seconds = {name: per_call_seconds(fn, args.calls) for name, fn in variants.items()}
        sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    print(f"{args.calls} calls per run, best of 5 runs; microseconds per call:")
    for name, value in seconds.items():
        print(f"  {name:<12} {value * 1e6:8.2f} us")
    print(f"record bytes per call: hand {sizes['hand.jsonl'] // (5 * args.calls)}, "
          f"traced {sizes['traced.jsonl'] // (5 * args.calls)}")
    print("ratios:")
    print(f"  traced / hand        {seconds['traced'] / seconds['hand']:.2f}x   (target <= 2.0x)")
    print(f"  traced-path / hand   {seconds['traced-path'] / seconds['hand']:.2f}x")
    print(f"  traced / bare        {seconds['traced'] / seconds['bare']:.1f}x")


if __name__ == "__main__":
    main()
