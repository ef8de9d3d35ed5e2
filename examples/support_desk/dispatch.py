"""Answer new support messages with the distilled tool set and compare with the teacher.

    python examples/support_desk/dispatch.py --run runs/support_desk --n 6
"""

from __future__ import annotations

import argparse
import time

from task import TOOLS, examples, route

from localdistil import Toolset
from localdistil.trace.toolset import same_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/support_desk", help="the training run's output.dir")
    parser.add_argument("--n", type=int, default=6, help="number of new messages")
    args = parser.parse_args()

    support = Toolset("support", TOOLS, parallel=True, max_calls=4, teacher=route,
                      model=args.run, on_invalid="fallback")
    exact = 0
    start = time.perf_counter()
    for message, truth in examples(args.n, seed=12345):  # not the seed of the training calls
        result = support.complete(user_message=message, mode="dispatch")
        got = {"tool_calls": [call.to_dict() for call in result.tool_calls]}
        agree = same_calls({"tool_calls": truth}, got)
        exact += agree
        print(f"\n{message}\n  {result.source}: "
              + "; ".join(f"{c.name}({c.arguments.model_dump_json()})" for c in result.tool_calls)
              + f" -> {result.tool_call_results}" + ("" if agree else "   (differs from truth)"))
    seconds = time.perf_counter() - start
    print(f"\n{exact}/{args.n} exactly right (calls in any order), {seconds / args.n:.2f} s each")


if __name__ == "__main__":
    main()
