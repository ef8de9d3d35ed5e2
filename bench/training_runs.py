"""Trace a task and train on it in a fresh process: what bench/defaults.py and the
``--curve`` of bench/quality.py share.

A task is one of the examples' functions (``examples/<task>/task.py``: the function and
``inputs(n, seed)``) or one of ``bench/unseen_tasks.py``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UNSEEN = ("route_ticket", "cast_scene", "shipping_label")
EXAMPLES = ("normalize_quantity", "extract_order", "triage_ticket", "three_digit_multiply")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


def task_calls(task: str, n: int, seed: int = 0) -> tuple[Any, list[dict[str, Any]]]:
    """The task's function and the keyword arguments of ``n`` calls drawn with ``seed``."""
    if task in UNSEEN:
        tasks = _load(ROOT / "bench" / "unseen_tasks.py", "unseen_tasks")
        return tasks.TASKS[task][0], tasks.calls(task, n, seed=seed)
    module = _load(ROOT / "examples" / task / "task.py", f"{task}_task")
    name = "multiply" if task == "three_digit_multiply" else task
    return getattr(module, name), module.inputs(n, seed=seed)


def trace(function: Any, calls: list[dict[str, Any]], path: Path) -> None:
    """Record ``calls`` of ``function`` into ``path`` (replaced) with ``mode="trace"``."""
    from localdistil import Instructions

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    instructions = Instructions(name=function.__name__, path=str(path))
    traced = instructions.distil(function)
    for call in calls:
        traced(**call)
    instructions.close()


def train(recipe: Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Run ``python -m localdistil train recipe --overwrite`` and summarise its new version."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "localdistil", "train", str(recipe.relative_to(ROOT)),
               *overrides, "--overwrite"]
    print("$", " ".join(command[1:]), flush=True)
    code = subprocess.run(command, cwd=ROOT).returncode
    wall = time.perf_counter() - started
    if code not in (0, 3):  # 3: the gate refused the version, which is a result too
        return {"error": f"train exited with status {code}"}
    run_dir = ROOT / _output_dir(recipe)
    version = sorted((run_dir / "versions").glob("v[0-9]*"))[-1]
    metrics = json.loads((version / "metrics.json").read_text("utf-8"))
    gate_s = metrics.get("time_to_gate_s")
    return {
        "train": metrics["train_examples"], "held_out": metrics["eval"]["examples"],
        "steps": metrics["steps"], "max_steps": metrics.get("max_steps"),
        "learning_rate": metrics.get("learning_rate"),
        "stopped_early": bool(metrics.get("stopped_early")),
        "train_min": metrics["train_seconds"] / 60, "command_min": wall / 60,
        "gate_min": None if gate_s is None else gate_s / 60,
        "best_step": metrics.get("best_step"), "exact": metrics["eval"]["exact_match"],
        "valid": metrics["eval"]["valid_rate"], "fields": metrics["eval"]["fields"],
        "curve": [(e["step"], e["exact_match"]) for e in metrics.get("accuracy", [])],
    }


def gate_text(summary: dict[str, Any]) -> str:
    """A summary's time to the gate, for a table cell."""
    return ("not reached" if summary["gate_min"] is None
            else f"{summary['gate_min']:.1f} min")


def _output_dir(recipe: Path) -> str:
    import yaml

    return yaml.safe_load(recipe.read_text("utf-8"))["output"]["dir"]


def write_recipe(path: Path, data: dict[str, Any], output_dir: Path) -> Path:
    """A recipe naming only ``model`` (the embedded default), ``data`` and ``output``."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"model": "smollm2-135m", "data": data,
            "output": {"dir": str(output_dir.relative_to(ROOT))}}
    path.write_text(f"# python -m localdistil train {path.relative_to(ROOT)}\n"
                    + yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path
