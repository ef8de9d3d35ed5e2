"""How closely the trained student answers like its teacher on the held-out questions.

    python examples/docs_qa/agreement.py [--run runs/docs_qa] [--show 8]

Reads the promoted version's ``eval.json`` (written by ``train``: the held-out questions, the
teacher's answer recorded by ``synth`` and the student's, under the grammar) and prints the exact
agreement and the mean token F1 (SQuAD's: the share of words the two answers have in common,
as a harmonic mean of precision and recall), then a few of the pairs. Free-text answers rarely
match word for word, so F1 says more than exact match here.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from localdistil.models.adapter import adapter_dir


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(expected: str, got: str) -> float:
    """SQuAD-style token F1 of two answers (1.0 when both are empty)."""
    a, b = words(expected), words(got)
    if not a or not b:
        return float(a == b)
    common = sum((Counter(a) & Counter(b)).values())
    if not common:
        return 0.0
    precision, recall = common / len(b), common / len(a)
    return 2 * precision * recall / (precision + recall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/docs_qa", help="the training run's output.dir")
    parser.add_argument("--show", type=int, default=8, help="how many pairs to print")
    args = parser.parse_args()

    version = adapter_dir(args.run)
    samples = json.loads((Path(version) / "eval.json").read_text(encoding="utf-8"))["samples"]
    pairs = [(s["args"]["question"], s["expected"]["answer"],
              (s["got"] or {}).get("answer")) for s in samples]
    answered = [(q, e, g) for q, e, g in pairs if g is not None]
    exact = sum(e.strip() == g.strip() for _, e, g in answered) / len(pairs)
    f1 = sum(token_f1(e, g) for _, e, g in answered) / len(pairs)
    print(f"{version}: {len(pairs)} held-out questions, {len(answered)} answered")
    print(f"exact agreement with the teacher  {exact:.1%}")
    print(f"mean token F1 with the teacher    {f1:.2f}")
    print("\n| question | teacher | student | F1 |\n| --- | --- | --- | --- |")
    for question, expected, got in pairs[:args.show]:
        score = token_f1(expected, got) if got is not None else 0.0
        print(f"| {question} | {expected} | {got if got is not None else '(no answer)'} | "
              f"{score:.2f} |")


if __name__ == "__main__":
    main()
