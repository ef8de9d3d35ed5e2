"""Ask the distilled model for new calls of ``multiply`` and compare with the function itself.

    python examples/three_digit_multiply/dispatch.py --run runs/three_digit_multiply --n 8
"""

from __future__ import annotations

import argparse
import time

from task import inputs, multiply

from localdistil import DispatchError, Instructions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default="runs/three_digit_multiply", help="the training run's output.dir"
    )
    parser.add_argument("--n", type=int, default=8, help="number of new calls")
    args = parser.parse_args()

    distilled = Instructions().distil(model=args.run, mode="dispatch")(multiply)
    calls = inputs(args.n, seed=12345)  # not the seed the training calls came from
    distilled.warmup()
    start = time.perf_counter()
    answers = distilled.batch(calls)  # a call with no answer comes back as its DispatchError
    seconds = time.perf_counter() - start

    print(f"{'call':<22} {'function':>10} {'model':>10}  digits right")
    exact = 0
    for call, answer in zip(calls, answers):
        truth = multiply(**call).result
        if isinstance(answer, DispatchError):  # an undertrained model ran out of tokens
            print(f"multiply({call['a']}, {call['b']})     {truth:>10}  "
                  "no answer within the token budget")
            continue
        right = sum(x == y for x, y in zip(str(truth).rjust(6), str(answer.result).rjust(6)))
        exact += answer.result == truth
        print(f"multiply({call['a']}, {call['b']})     {truth:>10} {answer.result:>10}  {right}/6")
    unfinished = sum(isinstance(answer, DispatchError) for answer in answers)
    valid = (f"{unfinished} ran out of tokens, the others are valid Multiply objects" if unfinished
             else "every answer is a valid Multiply")
    print(f"{exact}/{len(calls)} exact; {valid}; "
          f"{len(calls)} calls in one batch took {seconds:.1f} s")


if __name__ == "__main__":
    main()
