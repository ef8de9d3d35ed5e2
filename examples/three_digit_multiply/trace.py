"""Trace calls of ``multiply`` into training records.

    python examples/three_digit_multiply/trace.py --n 500 --out traces/three_digit_multiply.jsonl
"""

from __future__ import annotations

import argparse

from task import inputs, multiply

from localdistil import Instructions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="number of calls to trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="traces/three_digit_multiply.jsonl")
    args = parser.parse_args()

    instructions = Instructions(name="three_digit_multiply", path=args.out)
    traced = instructions.distil(multiply)
    for call in inputs(args.n, seed=args.seed):
        traced(**call)
    instructions.close()
    print(f"traced {args.n} calls of multiply into {args.out}")


if __name__ == "__main__":
    main()
