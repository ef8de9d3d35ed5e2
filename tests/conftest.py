"""Shared fixtures. Every test runs with its own LOCALDISTIL_HOME, so no test writes into the
repository or the user's home directory."""

from __future__ import annotations

import pytest
from pydantic import BaseModel


@pytest.fixture(autouse=True)
def localdistil_home(tmp_path, monkeypatch):
    """Point the model cache and every other piece of user state at a temporary directory."""
    home = tmp_path / "localdistil-home"
    monkeypatch.setenv("LOCALDISTIL_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight Llama with SmolLM2's special tokens and chat template (built once)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory):
    """A LOCALDISTIL_HOME holding the embedded SmolLM2, converted once per test session.

    Tests that use it set LOCALDISTIL_HOME to it (monkeypatch) so they share the conversion.
    """
    home = tmp_path_factory.mktemp("smollm2-home")
    _resolve_in(home, "smollm2-135m")
    return home


@pytest.fixture(scope="session")
def smollm2_path(smollm2_home):
    """The converted SmolLM2 checkpoint directory (a plain Hugging Face model)."""
    return _resolve_in(smollm2_home, "smollm2-135m")


def _resolve_in(home, reference):
    import os

    from localdistil.models.resolve import resolve_model

    previous = os.environ.get("LOCALDISTIL_HOME")
    os.environ["LOCALDISTIL_HOME"] = str(home)
    try:
        return resolve_model(reference)
    finally:
        if previous is None:
            os.environ.pop("LOCALDISTIL_HOME", None)
        else:
            os.environ["LOCALDISTIL_HOME"] = previous


class Multiply(BaseModel):
    a: int
    b: int
    result: int


@pytest.fixture
def traced_multiply(tmp_path):
    """24 traced calls of a multiply function: ``(trace file, the traced function)``."""
    from localdistil import Instructions

    path = tmp_path / "traces" / "multiply.jsonl"
    instructions = Instructions(path=str(path))

    @instructions.distil
    def multiply(a: int, b: int) -> Multiply:
        """Multiply two numbers."""
        return Multiply(a=a, b=b, result=a * b)

    for i in range(24):
        multiply(100 + i, 7)
    return path, multiply
