"""Ask the distilled model to normalise new quantities and compare with the function itself.

    python examples/normalize_quantity/dispatch.py --run runs/normalize_quantity --n 12

``--unseen traces/normalize_quantity.jsonl`` leaves out the inputs whose text was traced there
(training or held-out), so every call is one the model has never seen; ``--show 8`` prints the
first 8 calls and every miss instead of every call.
"""

from __future__ import annotations

import argparse
import time

from task import inputs, normalize_quantity

from localdistil import DispatchError, Instructions, read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/normalize_quantity",
                        help="the training run's output.dir")
    parser.add_argument("--n", type=int, default=12, help="number of new calls")
    parser.add_argument("--unseen", metavar="TRACES", nargs="+", default=[],
                        help="leave out inputs whose text these trace files hold")
    parser.add_argument("--show", type=int, default=None,
                        help="print only this many calls, and every miss (default: every call)")
    args = parser.parse_args()

    distilled = Instructions().distil(model=args.run, mode="dispatch")(normalize_quantity)
    calls = _new_calls(args.n, args.unseen)
    distilled.warmup()
    start = time.perf_counter()
    answers = distilled.batch(calls)  # a call with no answer comes back as its DispatchError
    seconds = time.perf_counter() - start

    print(f"{'text':<36} {'function':>14} {'model':>14}")
    exact = shown = 0
    for call, answer in zip(calls, answers):
        truth = normalize_quantity(**call)
        right = not isinstance(answer, DispatchError) and answer == truth
        exact += right
        if right and args.show is not None and shown >= args.show:
            continue
        shown += 1
        if isinstance(answer, DispatchError):
            print(f"{call['text']!r:<36} {truth.value:>9g} {truth.unit.value:<4}  "
                  f"no answer: {answer}")
            continue
        mark = "" if right else "  <- differs"
        print(f"{call['text']!r:<36} {truth.value:>9g} {truth.unit.value:<4} "
              f"{answer.value:>9g} {answer.unit.value:<4}{mark}")
    if shown < len(calls):
        print(f"... {len(calls) - shown} more right answers not shown")
    failed = sum(isinstance(answer, DispatchError) for answer in answers)
    valid = f"{failed} without an answer" if failed else "every answer is a valid Quantity"
    unseen = " never traced" if args.unseen else ""
    print(f"{exact}/{len(calls)} exact ({exact / len(calls):.1%}) on{unseen} calls; {valid}; "
          f"{len(calls)} calls in one batch took {seconds:.1f} s")


def _new_calls(n: int, traces: list[str]) -> list[dict[str, str]]:
    """``n`` distinct calls from a seed the training calls did not come from, less those
    traced."""
    seen = {record.args.get("text") for record in read_records(traces).records
            if record.args is not None} if traces else set()
    fresh = []
    for call in inputs(4 * n + len(seen), seed=12345):
        if call["text"] not in seen:
            seen.add(call["text"])  # each text once
            fresh.append(call)
    return fresh[:n]


if __name__ == "__main__":
    main()
