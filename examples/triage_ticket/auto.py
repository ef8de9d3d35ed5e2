"""Call ``triage_ticket`` decorated with ``mode="auto"`` and show who answers each call.

    python examples/triage_ticket/auto.py --run runs/demo --n 80 --seed 777

While ``--run`` has no promoted adapter the function runs and every call is recorded into
``--out`` (phase ``trace``); once one is promoted the model answers too and is compared with the
function (``shadow``); once the rolling agreement reaches ``--promote-at`` over at least
``--min-calls`` compared calls, the model answers and ``--monitor-rate`` of the calls are still
checked against the function (``dispatch``). The script prints each change of phase, how many
times the function's body ran, and whether the answers the caller got were right.
"""

from __future__ import annotations

import argparse
import functools
import time

from task import Ticket, examples, triage_ticket

from localdistil import Instructions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/triage_ticket",
                        help="the training run's output.dir (need not exist yet)")
    parser.add_argument("--out", default="traces/triage_ticket.jsonl",
                        help="where the calls the function runs are recorded")
    parser.add_argument("--n", type=int, default=80, help="number of calls")
    parser.add_argument("--seed", type=int, default=777, help="seed of the inputs")
    parser.add_argument("--window", type=int, default=40)
    parser.add_argument("--min-calls", type=int, default=20)
    parser.add_argument("--promote-at", type=float, default=0.95)
    parser.add_argument("--monitor-rate", type=float, default=0.1)
    args = parser.parse_args()

    body_ran = 0

    @functools.wraps(triage_ticket)  # same name, signature and docstring: same fingerprint
    def counted(subject: str) -> Ticket:
        nonlocal body_ran
        body_ran += 1
        return triage_ticket(subject)

    instructions = Instructions(name="triage_ticket", path=args.out, seed=0)
    fn = instructions.distil(model=args.run, mode="auto", window=args.window,
                             min_calls=args.min_calls, promote_at=args.promote_at,
                             monitor_rate=args.monitor_rate)(counted)
    policy = fn.router_stats.policy
    print(f"mode='auto' on {args.run}: promote_at={policy.promote_at}, "
          f"min_calls={policy.min_calls}, window={policy.window}, "
          f"monitor_rate={policy.monitor_rate}")

    started = time.perf_counter()
    phase, ran, right, by_phase = None, 0, 0, {}
    for number, (subject, truth) in enumerate(examples(args.n, seed=args.seed), start=1):
        before = fn.router_stats.summary()
        if before["phase"] != phase:
            phase = before["phase"]
            print(f"call {number:>4}: phase {phase:<8} version {before['version']}, "
                  f"agreement {_share(before['agreement'])} over {before['window']} compared "
                  f"call(s){_why(phase)}", flush=True)
        ran_before = body_ran
        answer = fn(subject=subject)
        right += answer == truth
        counts = by_phase.setdefault(phase, [0, 0])
        counts[0] += 1
        counts[1] += body_ran - ran_before
        ran = body_ran
    seconds = time.perf_counter() - started
    instructions.close()

    final = fn.router_stats.summary()
    print(f"after {args.n} calls: phase {final['phase']}, version {final['version']}, "
          f"agreement {_share(final['agreement'])} over the last {final['window']} of "
          f"{final['compared']} compared calls")
    for name, (calls, body) in by_phase.items():
        print(f"  {name:<8} {calls:>5} call(s), the function's body ran {body}")
    print(f"the function's body ran {ran} of {args.n} times; {right}/{args.n} answers the caller "
          f"got were right; {seconds:.1f} s")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _why(phase: str) -> str:
    return {"trace": " (no promoted adapter: the function runs, the call is recorded)",
            "shadow": " (the function answers, the model is compared with it)",
            "dispatch": " (the model answers; a sample is still checked)"}.get(phase, "")


if __name__ == "__main__":
    main()
