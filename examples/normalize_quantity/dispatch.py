"""Ask the distilled model to normalise new quantities and compare with the function itself.

    python examples/normalize_quantity/dispatch.py --run runs/normalize_quantity --n 12
"""

from __future__ import annotations

import argparse
import time

from task import inputs, normalize_quantity

from localdistil import DispatchError, Instructions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/normalize_quantity",
                        help="the training run's output.dir")
    parser.add_argument("--n", type=int, default=12, help="number of new calls")
    args = parser.parse_args()

    distilled = Instructions().distil(model=args.run, mode="dispatch")(normalize_quantity)
    calls = inputs(args.n, seed=12345)  # not the seed the training calls came from
    distilled.warmup()
    start = time.perf_counter()
    answers = distilled.batch(calls)  # a call with no answer comes back as its DispatchError
    seconds = time.perf_counter() - start

    print(f"{'text':<36} {'function':>14} {'model':>14}")
    exact = 0
    for call, answer in zip(calls, answers):
        truth = normalize_quantity(**call)
        if isinstance(answer, DispatchError):
            print(f"{call['text']!r:<36} {truth.value:>9g} {truth.unit.value:<4}  "
                  f"no answer: {answer}")
            continue
        exact += answer == truth
        mark = "" if answer == truth else "  <- differs"
        print(f"{call['text']!r:<36} {truth.value:>9g} {truth.unit.value:<4} "
              f"{answer.value:>9g} {answer.unit.value:<4}{mark}")
    failed = sum(isinstance(answer, DispatchError) for answer in answers)
    valid = f"{failed} without an answer" if failed else "every answer is a valid Quantity"
    print(f"{exact}/{len(calls)} exact; {valid}; "
          f"{len(calls)} calls in one batch took {seconds:.1f} s")


if __name__ == "__main__":
    main()
