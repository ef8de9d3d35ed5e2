"""What a server serves: named adapters and base models, each on its engine.

``localdistil serve runs/extract_order mult=runs/three_digit_multiply --base smollm2-135m``
serves three models: ``extract_order`` (the manifest's function name), ``mult`` and
``smollm2-135m``. :func:`load_served` parses those targets and loads every engine before the
server binds its port, so that a wrong path fails at once rather than on the first request.

An adapter retrained in place (its manifest changed on disk) is picked up on the next request:
:meth:`ServedModel.current` asks :meth:`Engine.for_adapter
<localdistil.inference.engine.Engine.for_adapter>` (which reloads on a changed manifest) and
reads the parameters anew when the engine changed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from localdistil.errors import AdapterError, LocaldistilError
from localdistil.inference.engine import Engine
from localdistil.serve.functions import FunctionParameters


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A served model's engine and, for an adapter, its function (both from one load)."""

    engine: Engine
    function: FunctionParameters | None
    schema: dict[str, Any] | None

    @property
    def context_length(self) -> int | None:
        """The model's context window in tokens, where its config says."""
        config = getattr(self.engine.model, "config", None)
        value = getattr(config, "max_position_embeddings", None)
        return value if isinstance(value, int) and value > 0 else None


class ServedModel:
    """One model the server answers for.

    Args:
        name: the ``model`` requests name it by.
        kind: ``"adapter"`` (a distilled function) or ``"base"`` (a base model alone, answering
            whatever schema a request gives).
        reference: the adapter directory, or the base model's reference (alias, directory, ...).

    Attributes:
        base_model: the base model's reference (the manifest's, for an adapter).
    """

    def __init__(self, name: str, kind: Literal["adapter", "base"], reference: str | Path):
        self.name = name
        self.kind = kind
        self.reference = str(reference)
        self._lock = threading.Lock()
        self._loaded: Loaded | None = None
        self.base_model = self.reference

    def current(self) -> Loaded:
        """The engine to answer with now (loading it, or reloading a retrained adapter).
        Blocking: call it from a worker thread.

        Raises:
            AdapterError, ModelError: the adapter or model cannot be loaded.
        """
        engine = (Engine.for_adapter(self.reference) if self.kind == "adapter"
                  else Engine.for_base(self.reference))
        loaded = self._loaded
        if loaded is not None and loaded.engine is engine:
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.engine is not engine:
                self._loaded = _describe(engine, self.reference)
                if engine.manifest is not None:
                    self.base_model = engine.manifest.base_model
            return self._loaded

    @property
    def adapter(self) -> str | None:
        """The adapter directory, for an adapter."""
        return str(self._loaded.engine.path) if self.kind == "adapter" and self._loaded else None

    @property
    def fingerprint(self) -> str | None:
        """The adapter's fingerprint (what it was trained for), reported as
        ``system_fingerprint``; ``None`` for a base model."""
        manifest = self._loaded.engine.manifest if self._loaded else None
        return None if manifest is None else manifest.fingerprint

    def __repr__(self) -> str:
        return f"ServedModel({self.name!r}, {self.kind} {self.reference})"


def _describe(engine: Engine, reference: str) -> Loaded:
    manifest = engine.manifest
    if manifest is None:
        return Loaded(engine, None, None)
    if not manifest.output_schema:
        raise AdapterError(f"the manifest at {engine.path} records no output schema, which the "
                           "server answers under. Train the adapter again.", path=engine.path)
    try:
        function = FunctionParameters(manifest.name, manifest.signature)
    except ValueError as error:
        raise AdapterError(f"{engine.path}: {error}", path=engine.path) from error
    return Loaded(engine, function, manifest.output_schema)


def parse_target(target: str) -> tuple[str | None, str]:
    """``name=path`` -> ``(name, path)``; a bare path (or one that exists as written, ``=``
    included) -> ``(None, path)``."""
    name, sep, path = target.partition("=")
    if not sep or Path(target).exists() or not name or "/" in name or "\\" in name:
        return None, target
    return name, path


def load_served(targets: Sequence[str], *, base: Sequence[str] | str | None = None
                ) -> list[ServedModel]:
    """Load what a server serves: adapters (``[name=]run_or_adapter_dir``) and base models
    (``[name=]reference``), each engine loaded now.

    Raises:
        LocaldistilError: nothing to serve, or two models under one name.
        AdapterError, ModelError: an adapter or model that cannot be loaded.
    """
    bases = [base] if isinstance(base, str) else list(base or ())
    if not targets and not bases:
        raise LocaldistilError("serve: nothing to serve. Name a run directory "
                               "(localdistil serve runs/my_function) or a base model (--base "
                               "smollm2-135m).")
    served: list[ServedModel] = []
    for kind, items in (("adapter", targets), ("base", bases)):
        for target in items:
            name, reference = parse_target(target)
            model = ServedModel(name or reference, kind, reference)  # type: ignore[arg-type]
            loaded = model.current()
            if name is None and loaded.engine.manifest is not None:
                model.name = loaded.engine.manifest.name
            served.append(model)
    names = [model.name for model in served]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise LocaldistilError(f"serve: two models are served as {twice[0]!r}. Name one of them: "
                               f"other_name=PATH.")
    return served
