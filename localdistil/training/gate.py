"""The gate: whether a version just trained is promoted.

:func:`evaluate_and_judge` evaluates the new version on the held-out calls and :func:`judge`
decides whether it is promoted: the recipe's ``gate:`` thresholds, and, with
``gate.not_worse``, the promoted version's exact match on the same held-out calls (its own
``eval.json`` reused when it answered exactly those); :func:`verdict_message` says what came of
it. Accuracy during training is :mod:`localdistil.training.accuracy`'s.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localdistil.errors import AdapterError
from localdistil.models.adapter import ADAPTER_SUBDIR, adapter_dir
from localdistil.models.versions import promoted_version
from localdistil.training.accuracy import answer_batch_size

if TYPE_CHECKING:
    from localdistil.records import Record
    from localdistil.training.evaluate import EvalReport
    from localdistil.training.recipe import GateSection, Recipe


@dataclasses.dataclass(frozen=True)
class GateVerdict:
    """Whether a new version is promoted, and why not.

    Attributes:
        passed: promote it.
        judged: whether held-out calls were answered at all; a version trained without any
            (``train.eval_samples: 0`` or no held-out data) passes unjudged.
        reasons: why it did not pass, one line per failed condition, naming the recipe key.
        calls: held-out calls answered.
        exact_match, valid_rate: the new version's, on those calls.
        against: the version it was compared with (``gate.not_worse``), if any.
        against_exact: that version's exact match on the same calls.
    """

    passed: bool
    judged: bool
    reasons: tuple[str, ...] = ()
    calls: int = 0
    exact_match: float | None = None
    valid_rate: float | None = None
    against: str | None = None
    against_exact: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "reasons": list(self.reasons)}


def judge(gate: GateSection, report: EvalReport | None, *, against: str | None = None,
          against_report: EvalReport | None = None) -> GateVerdict:
    """Judge a new version's evaluation ``report`` by ``gate``; ``against_report`` is the
    promoted version's evaluation on the same calls (needed when ``gate.not_worse``)."""
    if report is None:
        return GateVerdict(passed=True, judged=False)
    reasons = []
    if report.exact_match < gate.min_exact:
        reasons.append(f"held-out exact match {report.exact_match:.1%} is below gate.min_exact "
                       f"{gate.min_exact:.1%}")
    if report.valid_rate < gate.min_valid:
        reasons.append(f"valid outputs {report.valid_rate:.1%} are below gate.min_valid "
                       f"{gate.min_valid:.1%}")
    against_exact = against_report.exact_match if against_report is not None else None
    if gate.not_worse and against_exact is not None and report.exact_match < against_exact:
        reasons.append(f"exact match {report.exact_match:.1%} is worse than the promoted "
                       f"{against}'s {against_exact:.1%} on the same {report.examples} calls "
                       "(gate.not_worse)")
    return GateVerdict(passed=not reasons, judged=True, reasons=tuple(reasons),
                       calls=report.examples, exact_match=report.exact_match,
                       valid_rate=report.valid_rate,
                       against=against if against_report is not None else None,
                       against_exact=against_exact)


# -- judging a new version ----------------------------------------------------------------


def current_version(output_dir: Path) -> tuple[str, Path] | None:
    """``(name, adapter directory)`` of what ``output_dir`` loads now, before the new version:
    the promoted version, or the ``adapter/`` of a run from before versions; None if neither."""
    try:
        path = adapter_dir(output_dir)
    except AdapterError:
        return None
    return (promoted_version(output_dir) or f"{ADAPTER_SUBDIR}/"), path


def evaluate_and_judge(recipe: Recipe, version: Path, held_out: list[Record],
                       current: tuple[str, Path] | None, metrics: dict[str, Any], *,
                       say: Callable[[str], None]) -> GateVerdict:
    """Evaluate the new ``version``, write its ``eval.json`` and ``eval.md``, and judge it by the
    gate against ``current`` on the same held-out calls."""
    if not held_out:
        return judge(recipe.gate, None)
    from localdistil.training.evaluate import evaluate, format_eval, write_eval

    say(f"evaluating {version.name} on {len(held_out)} held-out call(s)")
    batch_size = answer_batch_size(recipe.train.batch_size)
    report = evaluate(version, held_out, batch_size=batch_size)
    write_eval(report, version)
    metrics["eval"] = {k: v for k, v in report.to_dict().items() if k != "samples"}
    say(format_eval(report))
    against = against_report = None
    if recipe.gate.not_worse and current is not None:
        against, path = current
        against_report = _earlier_evaluation(path, held_out)
        if against_report is None:
            say(f"evaluating the promoted {against} on the same {len(held_out)} call(s)")
            against_report = evaluate(path, held_out, batch_size=batch_size)
    return judge(recipe.gate, report, against=against, against_report=against_report)


def _earlier_evaluation(version: Path, held_out: list[Record]) -> EvalReport | None:
    """A version's own evaluation, when it answered exactly ``held_out`` (greedy decoding
    answers the same calls the same way again); else None."""
    from localdistil.training.evaluate import EvalReport

    try:
        saved = json.loads((version / "eval.json").read_text(encoding="utf-8"))
        report = EvalReport(**saved)
    except (OSError, ValueError, TypeError):
        return None
    asked = [(s.get("args"), s.get("expected")) for s in report.samples]
    return report if asked == [(r.args, r.output) for r in held_out] else None


def verdict_message(output_dir: Path, name: str, verdict: GateVerdict,
                    current: tuple[str, Path] | None) -> str:
    """What ``train`` says of the new version ``name`` once the gate has judged it."""
    if verdict.passed and not verdict.judged:
        return (f"promoted {name} unjudged: no held-out calls were answered (train.eval_samples "
                "is 0 or there is no held-out data)")
    if verdict.passed:
        compared = (f", not worse than {verdict.against} ({verdict.against_exact:.1%})"
                    if verdict.against else "")
        return (f"promoted {name}: exact match {verdict.exact_match:.1%}, valid "
                f"{verdict.valid_rate:.1%} on {verdict.calls} held-out call(s){compared}")
    still = (f"{output_dir} still loads {current[0]}" if current else
             f"no version of {output_dir} is promoted yet")
    return (f"the gate refused {name}, which stays a candidate ({still}):\n  "
            + "\n  ".join(verdict.reasons)
            + f"\npromote it anyway with: python -m localdistil runs promote {output_dir} {name}")
