"""Agreement between a function and its distilled model: whether two outputs agree, exactly and
field by field (:func:`compare_outputs`), and running counts of it (:class:`Agreement`) that
shadow mode keeps per function and evaluation reports."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any


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
    return Comparison(
        exact=dict(expected) == dict(got),
        fields={key: got.get(key) == value for key, value in expected.items()},
    )


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
                "fields": (
                    {key: count / calls for key, count in self.field_matches.items()}
                    if calls
                    else {}
                ),
            }

    def __repr__(self) -> str:
        summary = self.summary()
        return f"Agreement(calls={summary['calls']}, exact_match={summary['exact_match']})"
