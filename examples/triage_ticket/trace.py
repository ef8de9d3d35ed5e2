"""Trace calls of ``triage_ticket`` into training records.

    python examples/triage_ticket/trace.py --n 800 --out traces/triage_ticket.jsonl
"""

from __future__ import annotations

import argparse

from task import inputs, triage_ticket

from localdistil import Instructions

#: where the records go unless --out says otherwise: recipes/triage_ticket.yaml reads them here
TRACES = "traces/triage_ticket.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800, help="number of calls to trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=TRACES)
    args = parser.parse_args()

    instructions = Instructions(name="triage_ticket", path=args.out)
    traced = instructions.distil(triage_ticket)
    for call in inputs(args.n, seed=args.seed):
        traced(**call)
    instructions.close()
    print(f"traced {args.n} calls of triage_ticket into {args.out}")


if __name__ == "__main__":
    main()
