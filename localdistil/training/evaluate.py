"""Agreement between a function and its distilled model.

:func:`compare_outputs` says whether two outputs agree, exactly and field by field;
:class:`Agreement` accumulates that (shadow mode keeps one per decorated function);
:func:`evaluate` dispatches held-out records through an adapter and reports exact-match
accuracy, per-field accuracy, valid-output rate, latency p50/p95 and generated tokens/s.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from localdistil.records import Record


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How one model output compares with the function's."""

    exact: bool
    fields: dict[str, bool]


def compare_outputs(expected: Mapping[str, Any], got: Mapping[str, Any] | None) -> Comparison:
    """Exact and per-field (top-level keys of ``expected``) agreement of JSON-compatible outputs.
    ``got=None`` (no valid answer) agrees on nothing."""
    if got is None:
        return Comparison(exact=False, fields={key: False for key in expected})
    return Comparison(exact=dict(expected) == dict(got), fields={key: got.get(key) == value for key, value in expected.items()})


class Agreement:
    """Running agreement counts, safe to update from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.exact = 0
        self.field_matches: dict[str, int] = {}

    def add(self, comparison: Comparison) -> None:
        """Count one comparison."""
        with self._lock:
            self.calls += 1
            self.exact += comparison.exact
            for key, same in comparison.fields.items():
                self.field_matches[key] = self.field_matches.get(key, 0) + same

    def summary(self) -> dict[str, Any]:
        """``{"calls", "exact_match", "fields": {name: rate}}``; rates are None before any call."""
        with self._lock:
            calls = self.calls
            return {
                "calls": calls,
                "exact_match": self.exact / calls if calls else None,
                "fields": {key: count / calls for key, count in self.field_matches.items()} if calls else {},
            }

    def __repr__(self) -> str:
        summary = self.summary()
        return f"Agreement(calls={summary['calls']}, exact_match={summary['exact_match']})"


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


def evaluate(adapter: str | Path, records: Sequence[Record], *, batch_size: int = 8, max_new_tokens: int | None = None) -> EvalReport:
    """Dispatch ``records`` through ``adapter`` and compare with the recorded outputs.

    Each batch's wall time counts as the latency of every call in it (what a caller of
    ``fn.batch`` waits). Records without structured arguments are skipped (nothing to render).

    Raises:
        AdapterError: no complete adapter at ``adapter``.
        DatasetError: no record has arguments to dispatch.
    """
    from localdistil.inference.dispatch import load_adapter
    from localdistil.errors import DatasetError

    loaded = load_adapter(adapter)
    schema = loaded.manifest.output_schema or {}
    usable = [r for r in records if r.args is not None]
    if not usable:
        raise DatasetError("None of the records keeps its arguments, so none can be dispatched for evaluation.")
    budget = max_new_tokens or loaded.budget()
    agreement, latencies, samples = Agreement(), [], []
    generated = valid = 0
    started = time.perf_counter()
    for start in range(0, len(usable), batch_size):
        batch = usable[start:start + batch_size]
        began = time.perf_counter()
        results = loaded.generate(schema, [loaded.prompt_ids(r.args) for r in batch], max_new_tokens=budget)
        latencies += [time.perf_counter() - began] * len(batch)
        for record, result in zip(batch, results):
            generated += result.token_count
            got = json.loads(result.text) if result.finished else None
            valid += got is not None
            comparison = compare_outputs(record.output, got)
            agreement.add(comparison)
            samples.append({"args": record.args, "expected": record.output, "got": got,
                            "text": result.text, "exact": comparison.exact})
    seconds = time.perf_counter() - started
    summary = agreement.summary()
    return EvalReport(
        adapter=str(loaded.path), function=loaded.manifest.name, examples=len(usable),
        exact_match=summary["exact_match"], fields=summary["fields"], valid_rate=valid / len(usable),
        latency_p50_s=_percentile(latencies, 0.5), latency_p95_s=_percentile(latencies, 0.95),
        generated_tokens_per_s=generated / seconds if seconds else 0.0, batch_size=batch_size, samples=samples,
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
        f"| latency p50 / p95 (batch {report.batch_size}) | {report.latency_p50_s * 1000:.0f} ms / {report.latency_p95_s * 1000:.0f} ms |",
        f"| generated tokens/s | {report.generated_tokens_per_s:.1f} |",
        "",
    ]
    if show and report.samples:
        lines += ["| arguments | expected | model | match |", "| --- | --- | --- | --- |"]
        for sample in report.samples[:show]:
            args = json.dumps(sample["args"], separators=(",", ":"))
            expected = json.dumps(sample["expected"], separators=(",", ":"))
            lines.append(f"| `{args}` | `{expected}` | `{sample['text']}` | {'yes' if sample['exact'] else 'no'} |")
    return "\n".join(lines)


def write_eval(report: EvalReport, directory: Path) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "eval.json", directory / "eval.md"
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(format_eval(report, show=20) + "\n", encoding="utf-8")
    return json_path, md_path
