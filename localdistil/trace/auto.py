"""``mode="auto"``: the function hands its calls to its model once the model has proven itself,
and takes them back when the model drifts.

Per call, :class:`AutoMode` picks the steps of one of the other modes:

- no usable adapter at ``model`` (none promoted yet, or made for another version of the
  function): run the function and record the call, as ``mode="distil"``;
- an adapter, not trusted yet (phase ``"shadow"``): run the function and return its result; the
  model answers too (every call, or ``shadow_rate`` of them) and the comparison is counted and
  written into the call's record, as ``mode="shadow"``;
- trusted (phase ``"dispatch"``): the model answers; on ``monitor_rate`` of the calls the function
  runs instead, its result is returned and compared with the model's, as in the shadow phase. A
  model without an answer (out of tokens, refused by the validators, cannot load) falls back to
  the function for that call, which is recorded as a new example.

The phase follows the rolling exact agreement (:mod:`localdistil.trace.auto_state`, which also
says how processes share it). The promoted version is looked up lazily, at most every
``VERSION_CHECK_S`` (a few ``stat`` calls), so an adapter trained while the service runs is
picked up without a restart; a new version (retrained and promoted, or rolled back) starts
untrusted. The function's own exceptions always pass through unchanged; nothing on the model's
side reaches the caller (it is reported as a ``TraceWarning``). Nothing heavy is imported until
an adapter exists.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from localdistil.errors import DispatchError, LocaldistilError
from localdistil.trace import auto_state
from localdistil.trace.auto_state import AutoPolicy, AutoState
from localdistil.trace.modes import Blocking, Mode, ShadowMode, Steps, TraceMode
from localdistil.trace.recorder import Recorder

if TYPE_CHECKING:
    from localdistil.inference.dispatch import Dispatcher

Answerer = TypeVar("Answerer")

#: Seconds between two looks for the promoted version of the run, by one decorated function.
VERSION_CHECK_S = 2.0


def _current_version(run: Path) -> str | None:
    """The id of the run's promoted adapter version, or ``None`` when it has none.

    Runs with versions answer ``v0003`` (:func:`localdistil.models.versions.promoted_version`);
    a run with a single ``adapter/`` answers ``adapter-<stamp>``, the stamp taken from its
    manifest's ``stat``, so an adapter trained again in place is a new version too.
    """
    from localdistil.models.adapter import MANIFEST_NAME, adapter_dir
    from localdistil.models.versions import promoted_version

    try:
        version = promoted_version(run)
        if version is not None:
            return str(version)
        stat = (adapter_dir(run) / MANIFEST_NAME).stat()
    except (LocaldistilError, OSError, ValueError):
        return None
    return f"adapter-{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _version_path(run: Path, version: str) -> Path:
    """Where to load ``version`` (from :func:`_current_version`) from: the version's own
    directory, not the run, whose promoted version may have changed since it was read; the run
    itself for a legacy ``adapter/``."""
    from localdistil.models.versions import VERSIONS_SUBDIR

    path = Path(run) / VERSIONS_SUBDIR / version
    return path if path.is_dir() else Path(run)


class _Comparing(ShadowMode):
    """Shadow steps on every call they are given, each comparison counted in the router state."""

    def __init__(self, recorder: Recorder, dispatcher: Dispatcher, state: AutoState, version: str):
        super().__init__(recorder, dispatcher, rate=1.0)
        self.state = state
        self.version = version

    def _compare(self, bound: dict[str, Any], result: Any) -> dict[str, Any] | None:
        annotations = super()._compare(bound, result)
        if annotations is not None:
            self.state.add(self.version, annotations["shadow"]["exact"])
        return annotations


@dataclasses.dataclass(frozen=True)
class Route(Generic[Answerer]):
    """The promoted version a router follows, and what answers with it."""

    version: str
    answerer: Answerer


class Router(Generic[Answerer]):
    """Follows a run's promoted version and the router state of one function or tool set.

    ``load(version, path)`` builds what answers with a version (``path`` is where to load it
    from); a :class:`~localdistil.errors.LocaldistilError` from it means the version cannot answer
    for this caller: reported once, and the caller keeps tracing until another version arrives.

    Args:
        run: the training run's ``output.dir``; the state is kept in ``run/auto/<name>.json``.
        name: the function's or tool set's name.
        policy: when to hand calls over and take them back.
        load: see above.
        report: reports a problem (a ``TraceWarning``; raised when strict).
    """

    def __init__(self, run: str | Path, name: str, policy: AutoPolicy,
                 load: Callable[[str, Path], Answerer], report: auto_state.Reporter):
        self.run = Path(run)
        self.name = name
        self.policy = policy
        self.state = AutoState(self.run / "auto" / f"{name}.json", policy, report)
        self.route: Route[Answerer] | None = None
        self._load_answerer = load
        self._report = report
        self._refused: str | None = None  # a version whose adapter cannot answer for us
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._next_look = 0.0  # time.monotonic() of the next look at the run and the state
        self._next_version = 0.0

    @property
    def due(self) -> bool:
        """Whether :meth:`look` has something to do (cheap: no I/O)."""
        return time.monotonic() >= self._next_look or self.state.stale

    def current(self) -> tuple[Route[Answerer] | None, auto_state.Snapshot]:
        """The route and the state a call goes by: no route, or one about another version than
        the state (switching), means trace."""
        route, view = self.route, self.state.view
        if route is not None and view.version != route.version:
            route = None
        return route, view

    def look(self, *, force: bool = False) -> None:
        """Follow the promoted version (looked up at most every ``VERSION_CHECK_S``) and the
        state file (every ``REFRESH_S``); ``force`` looks at the state file now."""
        if self._pid != os.getpid():  # forked: a lock held by another thread is never released
            self._lock, self._pid = threading.Lock(), os.getpid()
        with self._lock:
            now = time.monotonic()
            if not force and now < self._next_look and not self.state.stale:
                return
            self._next_look = now + auto_state.REFRESH_S
            if now >= self._next_version or self.state.stale:
                self._next_version = now + VERSION_CHECK_S
                self._follow(_current_version(self.run))
            self.state.refresh()

    def _follow(self, version: str | None) -> None:
        current = self.route.version if self.route is not None else None
        if version == current and not self.state.stale:
            return
        if version is not None and version == self._refused:
            return
        route = self.route
        if version != current:
            route = None if version is None else self._load(version)
            if route is None:
                version = None
        self.state.use(version)  # before the route: a call never sees a new route, old state
        self.route = route

    def _load(self, version: str) -> Route[Answerer] | None:
        """The route through ``version``; ``None`` (reported once) when it cannot answer:
        made for another version of the function, or incomplete."""
        try:
            answerer = self._load_answerer(version, _version_path(self.run, version))
        except LocaldistilError as exc:
            self._refused = version
            self._report(f"localdistil auto: {self.name} keeps tracing (the function, or a tool "
                         f"set's teacher, answers): the adapter {version} at {self.run} cannot "
                         f"answer for it. {exc}", exc)
            return None
        self._refused = None
        return Route(version, answerer)

    def summary(self) -> dict[str, Any]:
        """``{"phase", "version", "window", "agreement", "compared", "agreed", "promotions",
        "demotions", "since", "path"}``, as every process sharing the state sees it now."""
        self.look(force=True)
        view = self.state.view
        return {"phase": view.phase, "version": view.version, "window": len(view.window),
                "agreement": view.agreement, "compared": view.compared, "agreed": view.agreed,
                "promotions": view.promotions, "demotions": view.demotions, "since": view.since,
                "path": str(self.state.path)}


@dataclasses.dataclass(frozen=True)
class _Answerers:
    """What answers a function's calls with one version: the dispatcher, and the shadow steps
    that compare it with the function."""

    dispatcher: Dispatcher
    compare: _Comparing


class AutoMode(Mode):
    """Trace, shadow or dispatch, per call, by the router state (see the module docstring).

    Args:
        recorder: records the function's calls.
        run: the training run's ``output.dir``; the state is kept in ``run/auto/<name>.json``.
        dispatch_options: ``on_mismatch``, ``on_invalid``, ``retries``, ``max_new_tokens`` of
            the :class:`~localdistil.inference.dispatch.Dispatcher` built for each version.
        policy: when to hand calls over and take them back.
        shadow_rate: the fraction of calls compared while shadowing.
    """

    def __init__(self, recorder: Recorder, run: str | Path, dispatch_options: Mapping[str, Any],
                 policy: AutoPolicy, shadow_rate: float = 1.0):
        super().__init__(recorder)
        self.dispatch_options = dict(dispatch_options)
        self.policy = policy
        self.shadow_rate = shadow_rate
        self.router: Router[_Answerers] = Router(run, recorder.spec.name, policy, self._answerers,
                                                 recorder.report)
        self.state = self.router.state
        self.stats = RouterStats(self.router)
        self._trace = TraceMode(recorder)

    def call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Steps:
        if self.router.due:
            yield Blocking(self.router.look)
        route, view = self.router.current()
        if route is None:
            return (yield from self._trace.call(args, kwargs))
        sampler = self.recorder.instructions.sampler
        if view.phase == "dispatch":
            if sampler(self.policy.monitor_rate):
                return (yield from route.answerer.compare.call(args, kwargs))
            return (yield from self._dispatched(route.answerer.dispatcher, args, kwargs))
        if sampler(self.shadow_rate):
            return (yield from route.answerer.compare.call(args, kwargs))
        return (yield from self._trace.call(args, kwargs))

    def _dispatched(self, dispatcher: Dispatcher, args: tuple[Any, ...],
                    kwargs: Mapping[str, Any]) -> Steps:
        """The model's answer, or the traced function's where the model has none."""
        from localdistil.inference.dispatch import FALLBACK

        try:
            bound = self.spec.bind(args, kwargs)
        except Exception:  # the function itself says what is wrong with its arguments
            return (yield from self._trace.call(args, kwargs))
        try:
            (answer,) = yield Blocking(dispatcher.answer_many, ([bound],))
        except Exception as exc:  # the model's side never breaks the caller
            self.recorder.report(f"localdistil auto: the model could not answer {self.spec.name} "
                                 f"({exc}); the function answered.", exc)
            answer = FALLBACK
        if answer is FALLBACK or isinstance(answer, DispatchError):
            return (yield from self._trace.call(args, kwargs))
        return answer

    def look(self, *, force: bool = False) -> None:
        """See :meth:`Router.look`."""
        self.router.look(force=force)

    def _answerers(self, version: str, path: Path) -> _Answerers:
        from localdistil.inference.dispatch import Dispatcher

        dispatcher = Dispatcher(self.spec, path, **self.dispatch_options)
        return _Answerers(dispatcher, _Comparing(self.recorder, dispatcher, self.state, version))

    def attributes(self) -> dict[str, Any]:
        return {"router_stats": self.stats}


class RouterStats:
    """What an auto-mode function is doing (``fn.router_stats``), read anew at each access.

    ``phase`` is ``"trace"`` (no usable adapter: the function runs and is recorded),
    ``"shadow"`` (the function answers, the model is compared with it) or ``"dispatch"`` (the
    model answers, ``monitor_rate`` of the calls are still compared); ``version`` the adapter
    version it is about; ``window`` how many comparisons the rolling window holds (at most the
    ``window`` argument) and ``agreement`` their exact agreement (``None`` before any);
    ``compared`` the comparisons made with this version, in every process sharing the state.
    """

    def __init__(self, router: Router[Any]):
        self._router = router

    def summary(self) -> dict[str, Any]:
        """``{"phase", "version", "window", "agreement", "compared", "agreed", "promotions",
        "demotions", "since", "path"}``, as every process sharing the state sees it now."""
        return self._router.summary()

    @property
    def phase(self) -> str:
        return self.summary()["phase"]

    @property
    def version(self) -> str | None:
        return self.summary()["version"]

    @property
    def window(self) -> int:
        return self.summary()["window"]

    @property
    def agreement(self) -> float | None:
        return self.summary()["agreement"]

    @property
    def compared(self) -> int:
        return self.summary()["compared"]

    @property
    def policy(self) -> AutoPolicy:
        """The thresholds this function was decorated with."""
        return self._router.policy

    def __repr__(self) -> str:
        s = self.summary()
        return (f"RouterStats(phase={s['phase']!r}, version={s['version']!r}, "
                f"window={s['window']}, agreement={s['agreement']}, compared={s['compared']})")
