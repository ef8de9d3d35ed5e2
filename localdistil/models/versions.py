"""A training run's versions, and which one is promoted.

Each ``localdistil train`` of the same ``output.dir`` writes a new, complete version, and the
run directory keeps them all::

    RUN/
      versions/v0001/   an adapter directory (PEFT files, tokenizer, localdistil.json) with its
      versions/v0002/   metrics.json, eval.json, eval.md and loss.png
      promoted          {"version": "v0002", "history": ["v0001", "v0002"]}
      checkpoints/      the trainer's checkpoints of the latest training (``--resume``)
      recipe.yaml       the recipe of the latest training

``promoted`` names the version everything loads by default (:func:`~localdistil.models.adapter.
adapter_dir` resolves a run directory to it). Its ``history`` is a stack of promotions:
:func:`promote` pushes a version, :func:`rollback` pops the current one and promotes the one
under it again.

Crash safety, by construction:

- a version is written into a hidden staging directory (``versions/.v0003.tmp-1a2b3c4d``) and
  renamed into place whole (:func:`writing_version`), so every ``versions/vNNNN`` is complete:
  existing means complete; a staging directory a killed run left behind is removed by
  :func:`remove_unfinished_versions` (``train`` calls it before it starts);
- ``promoted`` is replaced atomically (a temporary file, fsync, ``os.replace``, fsync of the
  directory), under an exclusive lock (``flock`` on the run directory) so that two processes
  promoting at once do not lose one another's history. A SIGKILL at any moment leaves
  the old or the new version promoted, never none and never half a file.

One training at a time per run directory: versions are numbered by the process that writes
them, and two trainings of one ``output.dir`` at once would share its checkpoints anyway.

This module knows the layout of a run directory, not what an adapter holds; the command line
(``python -m localdistil runs list|promote|rollback|status RUN``) is built on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localdistil.errors import AdapterError
from localdistil.files import replace_file

__all__ = ["AUTO_SUBDIR", "PROMOTED_NAME", "VERSIONS_SUBDIR", "VersionInfo", "describe_versions",
           "format_versions", "list_versions", "promote", "promoted_version", "promotion_history",
           "remove_unfinished_versions", "rollback", "version_dir", "writing_version"]

VERSIONS_SUBDIR = "versions"
PROMOTED_NAME = "promoted"
#: Where auto mode keeps its state beside the versions (read by ``runs status``, written elsewhere).
AUTO_SUBDIR = "auto"
_VERSION = re.compile(r"v(\d{4,})")
_STAGING = re.compile(r"\.v(\d{4,})\.tmp-[0-9a-f]+")


def _promote_hint(run: Path) -> str:
    return f"python -m localdistil runs promote {run} VERSION"


def list_versions(run: str | os.PathLike[str]) -> list[str]:
    """The names of the run's versions, oldest first (``["v0001", "v0002"]``); ``[]`` if none."""
    root = Path(run) / VERSIONS_SUBDIR
    paths = root.iterdir() if root.is_dir() else ()
    names = [p.name for p in paths if p.is_dir() and _VERSION.fullmatch(p.name)]
    return sorted(names, key=lambda name: int(name[1:]))


def version_dir(run: str | os.PathLike[str], version: str) -> Path:
    """``RUN/versions/VERSION``, which must exist.

    Raises:
        AdapterError: the run has no such version (the message lists the ones it has).
    """
    run = Path(run)
    path = run / VERSIONS_SUBDIR / version
    if not _VERSION.fullmatch(version) or not path.is_dir():
        have = ", ".join(list_versions(run)) or "none yet"
        raise AdapterError(f"{run} has no version {version!r} (its versions: {have}). "
                           f"List them with: python -m localdistil runs list {run}", path=path)
    return path


def _read_promoted(run: Path) -> dict[str, Any] | None:
    path = run / PROMOTED_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AdapterError(f"{path} is unreadable ({exc}).", path=path) from None
    try:
        data = json.loads(text)
        version, history = data["version"], data["history"]
        names = [version, *history] if isinstance(history, list) else [None]
        if not all(isinstance(v, str) and _VERSION.fullmatch(v) for v in names):
            raise ValueError("no version name")
    except (ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"{path} is not a promotion record ({exc}). Promote a version again: "
                           f"{_promote_hint(run)}", path=path) from None
    return {"version": version, "history": history}


def promoted_version(run: str | os.PathLike[str]) -> str | None:
    """The promoted version's name, or ``None`` when the run has no ``promoted`` file.

    Raises:
        AdapterError: ``promoted`` exists but is unreadable.
    """
    found = _read_promoted(Path(run))
    return None if found is None else found["version"]


def promotion_history(run: str | os.PathLike[str]) -> list[str]:
    """The promotion stack, oldest first; its last item is the promoted version."""
    found = _read_promoted(Path(run))
    return [] if found is None else list(found["history"])


@contextlib.contextmanager
def _locked(run: Path) -> Iterator[None]:
    """An exclusive lock on the run's promotion record: ``flock`` on the run directory itself
    (no lock file to leave behind; the kernel releases it when a holder is killed)."""
    import fcntl

    directory = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        yield
    finally:
        os.close(directory)  # releases the lock


def _write_promoted(run: Path, version: str, history: list[str]) -> None:
    """Replace ``RUN/promoted`` atomically and durably (caller holds the lock)."""
    replace_file(run / PROMOTED_NAME, json.dumps({"version": version, "history": history}) + "\n")


def promote(run: str | os.PathLike[str], version: str) -> None:
    """Make ``version`` the one everything loads from ``run``, atomically.

    Promoting the version that is already promoted changes nothing.

    Raises:
        AdapterError: the run has no such version.
    """
    run = Path(run)
    version_dir(run, version)
    with _locked(run):
        history = promotion_history(run)
        if history and history[-1] == version:
            return
        _write_promoted(run, version, [*history, version])


def rollback(run: str | os.PathLike[str]) -> str:
    """Promote again the version that was promoted before the current one; returns its name.

    Raises:
        AdapterError: nothing was promoted before the current version (or nothing at all), or
            that version no longer exists.
    """
    run = Path(run)
    with _locked(run):
        history = promotion_history(run)
        if len(history) < 2:
            now = f"only {history[0]} has been promoted" if history else "no version is promoted"
            raise AdapterError(f"Nothing to roll back to in {run}: {now}. Promote a version by "
                               f"name instead: {_promote_hint(run)}", path=run)
        previous = history[-2]
        version_dir(run, previous)
        _write_promoted(run, previous, history[:-1])
    return previous


def _next_number(root: Path) -> int:
    """One above every version there, committed or being written."""
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    found = [m for name in names if (m := _VERSION.fullmatch(name) or _STAGING.fullmatch(name))]
    return max((int(m.group(1)) for m in found), default=0) + 1


@contextlib.contextmanager
def writing_version(run: str | os.PathLike[str]) -> Iterator[tuple[str, Path]]:
    """Write a new version: yields ``(name, staging directory)``; on success the staging
    directory is renamed to ``RUN/versions/<name>``, whole. On an exception it is removed and
    the run is left as it was."""
    root = Path(run) / VERSIONS_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"v{_next_number(root):04d}"
    staging = root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield name, staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.rename(staging, root / name)  # fails, rather than replace, if the name was taken


def remove_unfinished_versions(run: str | os.PathLike[str]) -> list[Path]:
    """Delete the staging directories of versions a killed process was writing; returns them."""
    root = Path(run) / VERSIONS_SUBDIR
    found = [p for p in root.iterdir() if _STAGING.fullmatch(p.name)] if root.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """What ``runs list`` and ``runs status`` show of one version (from its ``metrics.json``)."""

    name: str
    path: Path
    promoted: bool
    steps: int | None
    exact_match: float | None
    """Held-out exact match after training (``None``: not evaluated)."""
    valid_rate: float | None
    gate: dict[str, Any] | None
    """The gate's verdict when it was trained (``passed``, ``reasons``, ...)."""


def describe_versions(run: str | os.PathLike[str]) -> list[VersionInfo]:
    """Every version of ``run``, oldest first, with its figures; tolerant of missing metrics."""
    run = Path(run)
    promoted = promoted_version(run)
    found = []
    for name in list_versions(run):
        path = run / VERSIONS_SUBDIR / name
        try:
            metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}
        metrics = metrics if isinstance(metrics, dict) else {}
        evaluation = metrics.get("eval") or {}
        found.append(VersionInfo(
            name=name, path=path, promoted=name == promoted, steps=metrics.get("steps"),
            exact_match=evaluation.get("exact_match"), valid_rate=evaluation.get("valid_rate"),
            gate=metrics.get("gate")))
    return found


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def format_versions(run: str | os.PathLike[str], *, status: bool = False) -> str:
    """The table ``runs list`` prints; with ``status``, also the promotion history and the auto
    mode state files (``RUN/auto/*.json``, printed as they are, if there are any)."""
    run = Path(run)
    versions = describe_versions(run)
    promoted = promoted_version(run)
    lines = []
    if status:
        history = promotion_history(run)
        lines.append(f"promoted  {promoted or 'none'}"
                     + (f"  (history: {' -> '.join(history)})" if len(history) > 1 else ""))
        if promoted is None and versions:
            lines.append(f"          promote one with: {_promote_hint(run)}")
        lines.append("")
    if not versions:
        lines.append(f"{run} has no versions yet: python -m localdistil train RECIPE "
                     f"(with output.dir: {run})")
    else:
        lines.append(f"{'version':<9} {'steps':>6} {'exact':>7} {'valid':>7}  gate")
        for info in versions:
            gate = info.gate or {}
            verdict = ("-" if not gate else "passed" if gate.get("passed")
                       else "refused: " + "; ".join(gate.get("reasons") or []))
            mark = "*" if info.promoted else " "
            steps = "-" if info.steps is None else info.steps
            lines.append(f"{info.name + mark:<9} {steps:>6} {_percent(info.exact_match):>7} "
                         f"{_percent(info.valid_rate):>7}  {verdict}")
        lines.append("(* promoted)")
    auto_dir = run / AUTO_SUBDIR
    auto = sorted(auto_dir.glob("*.json")) if status and auto_dir.is_dir() else []
    for path in auto:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            text = f"(unreadable: {exc})"
        lines += ["", f"auto mode state {path}:", text]
    return "\n".join(lines)
