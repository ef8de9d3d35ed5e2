"""The seed example: a three-digit multiply, distilled into a 135M model.

Multiplication is hard for a small language model, which makes it a good honest test: the
grammar guarantees a valid ``Multiply`` every time, and accuracy shows what training achieved.
"""

from __future__ import annotations

import random

from pydantic import BaseModel


class Multiply(BaseModel):
    a: int
    b: int
    result: int


def multiply(a: int, b: int) -> Multiply:
    """Multiply two three-digit numbers."""
    return Multiply(a=a, b=b, result=a * b)


def inputs(n: int, seed: int = 0) -> list[dict[str, int]]:
    """``n`` random pairs of three-digit numbers, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [{"a": rng.randint(100, 999), "b": rng.randint(100, 999)} for _ in range(n)]
