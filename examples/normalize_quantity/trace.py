"""Trace calls of ``normalize_quantity`` into training records.

    python examples/normalize_quantity/trace.py --n 1500 --out traces/normalize_quantity.jsonl
"""

from __future__ import annotations

import argparse

from task import inputs, normalize_quantity

from localdistil import Instructions

#: where the records go unless --out says otherwise: recipes/normalize_quantity.yaml reads them here
TRACES = "traces/normalize_quantity.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500, help="number of calls to trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=TRACES)
    args = parser.parse_args()

    instructions = Instructions(name="normalize_quantity", path=args.out)
    traced = instructions.distil(normalize_quantity)
    for call in inputs(args.n, seed=args.seed):
        traced(**call)
    instructions.close()
    print(f"traced {args.n} calls of normalize_quantity into {args.out}")


if __name__ == "__main__":
    main()
