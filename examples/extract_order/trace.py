"""Trace calls of ``extract_order`` into training records.

    python examples/extract_order/trace.py --n 1200 --out traces/extract_order.jsonl
"""

from __future__ import annotations

import argparse

from task import extract_order, inputs

from localdistil import Instructions

#: where the records go unless --out says otherwise: recipes/extract_order.yaml reads them here
TRACES = "traces/extract_order.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200, help="number of calls to trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=TRACES)
    args = parser.parse_args()

    instructions = Instructions(name="extract_order", path=args.out)
    traced = instructions.distil(extract_order)
    for call in inputs(args.n, seed=args.seed):
        traced(**call)
    instructions.close()
    print(f"traced {args.n} calls of extract_order into {args.out}")


if __name__ == "__main__":
    main()
