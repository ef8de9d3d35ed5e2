"""Trace calls of the ``support`` tool set, answered by the teacher, into training records.

    python examples/support_desk/trace.py --n 1200 --out traces/support_desk.jsonl
"""

from __future__ import annotations

import argparse

from task import TOOLS, inputs, route

from localdistil import Toolset

#: where the records go unless --out says otherwise: recipes/support_desk.yaml reads them here
TRACES = "traces/support_desk.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200, help="number of messages to trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=TRACES)
    args = parser.parse_args()

    support = Toolset("support", TOOLS, parallel=True, max_calls=4, teacher=route, path=args.out)
    for message in inputs(args.n, seed=args.seed):
        support.complete(user_message=message, mode="trace")
    support.close()
    print(f"traced {args.n} calls of the support tool set into {args.out}")


if __name__ == "__main__":
    main()
