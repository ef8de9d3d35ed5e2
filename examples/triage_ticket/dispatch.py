"""Ask the distilled model to triage new tickets and compare with the function itself.

    python examples/triage_ticket/dispatch.py --run runs/triage_ticket --n 12

``--unseen traces/triage_ticket.jsonl`` leaves out the subjects traced there (training or
held-out), so every call is one the model has never seen; ``--show 8`` prints the first 8 calls
and every miss instead of every call.
"""

from __future__ import annotations

import argparse
import time

from task import inputs, triage_ticket

from localdistil import DispatchError, Instructions, read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/triage_ticket", help="the training run's output.dir")
    parser.add_argument("--n", type=int, default=12, help="number of new calls")
    parser.add_argument("--unseen", metavar="TRACES", nargs="+", default=[],
                        help="leave out subjects these trace files hold")
    parser.add_argument("--show", type=int, default=None,
                        help="print only this many calls, and every miss (default: every call)")
    args = parser.parse_args()

    distilled = Instructions().distil(model=args.run, mode="dispatch")(triage_ticket)
    calls = _new_calls(args.n, args.unseen)
    distilled.warmup()
    start = time.perf_counter()
    answers = distilled.batch(calls)  # a call with no answer comes back as its DispatchError
    seconds = time.perf_counter() - start

    print(f"{'subject':<58} {'function':<16} model")
    exact = shown = 0
    for call, answer in zip(calls, answers):
        truth = triage_ticket(**call)
        right = not isinstance(answer, DispatchError) and answer == truth
        exact += right
        if right and args.show is not None and shown >= args.show:
            continue
        shown += 1
        got = (f"no answer: {answer}" if isinstance(answer, DispatchError) else
               _ticket(answer) + ("" if right else "  <- differs"))
        print(f"{call['subject'][:58]:<58} {_ticket(truth):<16} {got}")
    if shown < len(calls):
        print(f"... {len(calls) - shown} more right answers not shown")
    failed = sum(isinstance(answer, DispatchError) for answer in answers)
    valid = f"{failed} without an answer" if failed else "every answer is a valid Ticket"
    unseen = " never traced" if args.unseen else ""
    print(f"{exact}/{len(calls)} exact ({exact / len(calls):.1%}) on{unseen} calls; {valid}; "
          f"{len(calls)} calls in one batch took {seconds:.1f} s")


def _ticket(ticket) -> str:
    return f"{ticket.queue.value} {'-' if ticket.order is None else ticket.order}"


def _new_calls(n: int, traces: list[str]) -> list[dict[str, str]]:
    """``n`` distinct calls from a seed the training calls did not come from, less the subjects
    traced."""
    seen = {record.args.get("subject") for record in read_records(traces).records
            if record.args is not None} if traces else set()
    fresh = []
    for call in inputs(4 * n + len(seen), seed=12345):
        if call["subject"] not in seen:
            seen.add(call["subject"])  # each subject once
            fresh.append(call)
    return fresh[:n]


if __name__ == "__main__":
    main()
