"""Ask the model trained on the teacher's questions and answers about localdistil's README.

    python examples/docs_qa/dispatch.py "How do I train an adapter?" "What does dispatch do?"

The function below is the one the synth recipe (examples/docs_qa/synth.yaml, ``function:``)
wrote its records for: same name, parameter, return type and docstring, so the same fingerprint,
which the adapter checks before it answers.
"""

from __future__ import annotations

import argparse

from pydantic import BaseModel

from localdistil import DispatchError, Instructions


class Answer(BaseModel):
    answer: str


def answer(question: str) -> Answer:
    """Answer a question about localdistil from its documentation."""
    raise NotImplementedError("no code to trace: the records came from documents")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", nargs="*", default=[
        "How do I train an adapter?", "What does localdistil serve do?",
        "Which model is embedded by default?"])
    parser.add_argument("--run", default="runs/docs_qa", help="the training run's output.dir")
    args = parser.parse_args()

    distilled = Instructions().distil(model=args.run, mode="dispatch")(answer)
    for question, reply in zip(args.questions, distilled.batch(
            [{"question": q} for q in args.questions])):
        text = ("(no answer within the token budget)" if isinstance(reply, DispatchError)
                else reply.answer)
        print(f"Q: {question}\nA: {text}\n")


if __name__ == "__main__":
    main()
