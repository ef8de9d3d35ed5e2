"""The public surface: explicit, sorted, and light to import (tracing runs in production code)."""

from __future__ import annotations

import subprocess
import sys

import localdistil


def test_all_is_sorted_and_every_name_exists():
    assert localdistil.__all__ == sorted(localdistil.__all__)
    assert all(hasattr(localdistil, name) for name in localdistil.__all__)


def test_importing_and_tracing_loads_no_heavy_library():
    code = (
        "import sys, localdistil\n"
        "from pydantic import BaseModel\n"
        "class M(BaseModel):\n    x: int\n"
        "@localdistil.Instructions().distil\n"
        "def f(x: int) -> M:\n    return M(x=x)\n"
        "f(1)\n"
        "heavy = {'torch', 'transformers', 'trl', 'peft', 'datasets', 'outlines', 'accelerate',\n"
        "         'fastapi', 'uvicorn', 'starlette'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
