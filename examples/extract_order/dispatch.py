"""Ask the distilled model to extract new orders and compare with the function itself.

    python examples/extract_order/dispatch.py --run runs/extract_order --n 6
"""

from __future__ import annotations

import argparse
import time

from task import Order, extract_order, inputs

from localdistil import DispatchError, Instructions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/extract_order", help="the training run's output.dir")
    parser.add_argument("--n", type=int, default=6, help="number of new calls")
    args = parser.parse_args()

    distilled = Instructions().distil(model=args.run, mode="dispatch")(extract_order)
    calls = inputs(args.n, seed=12345)  # not the seed the training calls came from
    distilled.warmup()
    start = time.perf_counter()
    answers = distilled.batch(calls)  # a call with no answer comes back as its DispatchError
    seconds = time.perf_counter() - start

    exact = 0
    fields = list(Order.model_fields)
    for call, answer in zip(calls, answers):
        truth = extract_order(**call)
        exact += answer == truth
        print("\n" + call["message"])
        if isinstance(answer, DispatchError):
            print(f"  no answer: {answer}")
            continue
        print(f"  {'field':<14} {'function':<44} {'model':<44}")
        for field in fields:
            want, got = _show(getattr(truth, field)), _show(getattr(answer, field))
            print(f"  {field:<14} {want:<44} {got:<44}{'' if want == got else '  <- differs'}")
    failed = sum(isinstance(answer, DispatchError) for answer in answers)
    valid = f"{failed} without an answer" if failed else "every answer is a valid Order"
    print(f"\n{exact}/{len(calls)} exact; {valid}; "
          f"{len(calls)} calls in one batch took {seconds:.1f} s")


def _show(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(f"{item.quantity} x {item.name}" for item in value)
    if value is None:
        return "-"
    return str(getattr(value, "value", value))


if __name__ == "__main__":
    main()
