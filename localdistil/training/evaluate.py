"""Evaluation of an adapter on held-out calls.

:func:`evaluate` answers held-out records through the adapter's engine and reports exact-match
accuracy, per-field accuracy, valid-output rate, latency p50/p95 and generated tokens/s;
:func:`write_eval` writes them as ``eval.json`` and a Markdown table ``eval.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localdistil.inference.agreement import Agreement, compare_outputs
from localdistil.records import Record


@dataclasses.dataclass
class EvalReport:
    """What :func:`evaluate` measured."""

    adapter: str
    function: str
    examples: int
    exact_match: float
    fields: dict[str, float]
    valid_rate: float
    latency_p50_s: float
    latency_p95_s: float
    generated_tokens_per_s: float
    batch_size: int
    samples: list[dict[str, Any]]
    """Every example: arguments, expected and generated output, whether it matched."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (``eval.json``)."""
        return dataclasses.asdict(self)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def evaluate(adapter: str | Path, records: Sequence[Record], *, batch_size: int = 8,
             max_new_tokens: int | None = None) -> EvalReport:
    """Answer ``records`` through ``adapter``'s engine and compare with the recorded outputs.

    Each batch's wall time counts as the latency of every call in it (what a caller of
    ``fn.batch`` waits). Records without structured arguments are skipped (nothing to render).

    Raises:
        AdapterError: no complete adapter at ``adapter``.
        DatasetError: no record has arguments to dispatch.
    """
    from localdistil.errors import DatasetError
    from localdistil.inference.engine import Engine

    engine = Engine.for_adapter(adapter)
    schema = engine.manifest.output_schema or {}
    usable = [r for r in records if r.args is not None]
    if not usable:
        raise DatasetError(
            "None of the records keeps its arguments, so none can be dispatched for evaluation."
        )
    agreement, latencies, samples = Agreement(), [], []
    generated = valid = 0
    started = time.perf_counter()
    for start in range(0, len(usable), batch_size):
        batch = usable[start:start + batch_size]
        began = time.perf_counter()
        prompts = [engine.call_prompt(r.args, r.repairs) for r in batch]
        outcomes = engine.answer(prompts, schema=schema,
                                 max_new_tokens=max_new_tokens)
        latencies += [time.perf_counter() - began] * len(batch)
        for record, outcome in zip(batch, outcomes):
            generated += outcome.completion_tokens
            valid += outcome.ok
            comparison = compare_outputs(record.output, outcome.value)
            agreement.add(comparison)
            samples.append({"args": record.args, "expected": record.output, "got": outcome.value,
                            "text": outcome.text, "exact": comparison.exact})
    seconds = time.perf_counter() - started
    summary = agreement.summary()
    return EvalReport(
        adapter=str(engine.path), function=engine.name, examples=len(usable),
        exact_match=summary["exact_match"], fields=summary["fields"],
        valid_rate=valid / len(usable),
        latency_p50_s=_percentile(latencies, 0.5), latency_p95_s=_percentile(latencies, 0.95),
        generated_tokens_per_s=generated / seconds if seconds else 0.0,
        batch_size=batch_size, samples=samples,
    )


def format_eval(report: EvalReport, *, show: int = 5) -> str:
    """The report as a Markdown table, then a few examples."""
    lines = [
        f"# Evaluation of {report.function}",
        "",
        f"adapter: `{report.adapter}`",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| examples | {report.examples} |",
        f"| exact match | {report.exact_match:.1%} |",
        *(f"| field `{name}` | {rate:.1%} |" for name, rate in report.fields.items()),
        f"| valid outputs | {report.valid_rate:.1%} |",
        f"| latency p50 / p95 (batch {report.batch_size}) "
        f"| {report.latency_p50_s * 1000:.0f} ms / {report.latency_p95_s * 1000:.0f} ms |",
        f"| generated tokens/s | {report.generated_tokens_per_s:.1f} |",
        "",
    ]
    if show and report.samples:
        lines += ["| arguments | expected | model | match |", "| --- | --- | --- | --- |"]
        for sample in report.samples[:show]:
            args = json.dumps(sample["args"], separators=(",", ":"))
            expected = json.dumps(sample["expected"], separators=(",", ":"))
            exact = "yes" if sample["exact"] else "no"
            lines.append(f"| `{args}` | `{expected}` | `{sample['text']}` | {exact} |")
    return "\n".join(lines)


def write_eval(report: EvalReport, directory: Path) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "eval.json", directory / "eval.md"
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(format_eval(report, show=20) + "\n", encoding="utf-8")
    return json_path, md_path
