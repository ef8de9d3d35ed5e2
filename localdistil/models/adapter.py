"""The adapter directory and its manifest, ``localdistil.json``.

An adapter directory holds the standard PEFT files (``adapter_config.json``,
``adapter_model.safetensors``), so ``peft.PeftModel.from_pretrained`` and serving engines load it
as is; the tokenizer files; and the manifest, which records everything dispatch needs to answer
for the function exactly as it was trained: the base model and its content hash, the tokenizer
and chat-template hash, the function's name, fingerprint and output schema, the prompt style and
version, the recipe as run, training metrics and library versions.

A run's output directory (``output.dir``) keeps one adapter directory per training, as versions
(``versions/v0001/``, ...; see :mod:`localdistil.models.versions`), and :func:`adapter_dir`
resolves a run to the promoted one (runs trained before versions existed keep theirs in
``adapter/``). Adapters are written into a temporary sibling directory and renamed into place,
so a crash never leaves a half-written adapter that looks complete.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from localdistil.errors import AdapterError, AdapterMismatchError
from localdistil.spec import FunctionSpec, canonical_json, schema_hash, sha256_hex

MANIFEST_NAME = "localdistil.json"
ADAPTER_SUBDIR = "adapter"
MANIFEST_VERSION = 2
"""2: ``schema_hash`` and ``fingerprint`` keep the schema's field order (1 hashed sorted keys)."""
_PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


class Manifest(BaseModel):
    """What an adapter was trained for and how (``localdistil.json``)."""

    model_config = ConfigDict(extra="allow")

    version: int = MANIFEST_VERSION
    base_model: str
    """The model reference the recipe named (alias, hub id, directory or .gguf)."""
    base_model_path: str
    """The local Hugging Face directory it resolved to when training."""
    base_model_hash: str
    tokenizer_hash: str
    """SHA-256 over the tokenizer's vocabulary and chat template."""
    function: str
    name: str
    signature: str | None = None
    doc: str | None = None
    fingerprint: str | None = None
    output_schema: dict[str, Any] | None = None
    schema_hash: str | None = None
    prompt_style: str
    prompt_version: int
    rendering: str = "canonical-compact-json"
    max_output_tokens: int
    """The longest answer seen in training, in tokens (dispatch derives its budget from it)."""
    repair_examples: int = 0
    """Training examples of a tool set that fed refused answers back (``Record.repairs``): a
    tool set may feed errors back to the model (``on_invalid="repair"``) only if it learnt
    from some."""
    recipe: dict[str, Any]
    metrics: dict[str, Any] = {}
    versions: dict[str, str] = {}


def tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 over a tokenizer's vocabulary, special tokens and chat template."""
    vocab = sorted(tokenizer.get_vocab().items())
    return sha256_hex(canonical_json({
        "vocab": vocab,
        "chat_template": tokenizer.chat_template,
        "eos": tokenizer.eos_token,
    }))


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on, for provenance."""
    versions = {}
    for package in ("localdistil", "torch", "transformers", "peft", "trl", "datasets",
                    "accelerate", "outlines", "pydantic"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def adapter_dir(path: str | os.PathLike[str]) -> Path:
    """The adapter directory ``path`` stands for. The one resolver dispatch, shadow, eval,
    export and serve all use:

    1. ``path`` itself, when it is an adapter directory (it holds ``localdistil.json``);
    2. else, for a run directory with a ``promoted`` file, its promoted version
       (``RUN/versions/<promoted>``, see :mod:`localdistil.models.versions`);
    3. else a run's ``adapter/``, where runs trained before versions existed keep it.

    Raises:
        AdapterError: none of these holds a complete adapter (PEFT files and manifest); the
            message says what to do (train, resume, or promote a version).
    """
    from localdistil.models.versions import (
        PROMOTED_NAME,
        list_versions,
        promoted_version,
        version_dir,
    )

    path = Path(path)
    candidates = [path]
    promoted = promoted_version(path) if (path / PROMOTED_NAME).is_file() else None
    if promoted is not None:
        try:
            candidates.append(version_dir(path, promoted))
        except AdapterError as exc:
            raise AdapterError(
                f"{path / PROMOTED_NAME} names {promoted}, which is gone: {exc} Promote another: "
                f"python -m localdistil runs promote {path} VERSION", path=path) from None
    candidates.append(path / ADAPTER_SUBDIR)
    for candidate in candidates:
        if (candidate / MANIFEST_NAME).is_file():
            missing = [name for name in _PEFT_FILES if not (candidate / name).is_file()]
            if missing:
                raise AdapterError(f"{candidate} is incomplete: {', '.join(missing)} missing. "
                                   "Train it again.", path=candidate)
            return candidate
    if not path.exists():
        raise AdapterError(f"No adapter at {path}: the directory does not exist. Pass the "
                           "output.dir of a training run.", path=path)
    versions = list_versions(path)
    if versions:
        raise AdapterError(
            f"No version of {path} is promoted (its versions: {', '.join(versions)}; none passed "
            f"the recipe's gate). See them with: python -m localdistil runs status {path}; promote "
            f"one with: python -m localdistil runs promote {path} {versions[-1]}",
            path=path,
        )
    raise AdapterError(
        f"No adapter at {path}: it is neither an adapter directory nor a training run with a "
        f"version ({MANIFEST_NAME} is not there, nor in versions/ or {ADAPTER_SUBDIR}/). Pass the "
        "output.dir of a finished training run (an interrupted one resumes with --resume).",
        path=path,
    )


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """The manifest of the adapter at ``path`` (an adapter directory or a run directory)."""
    directory = adapter_dir(path)
    try:
        return Manifest.model_validate_json((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{directory / MANIFEST_NAME} is unreadable: {exc}",
                           path=directory) from exc


@contextlib.contextmanager
def writing_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Write into a temporary sibling of ``target``, then rename it into place on success.

    On an exception the temporary directory is removed and ``target`` is left untouched; a
    previous ``target`` is replaced only once the new one is whole.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``localdistil.json`` into ``directory``."""
    text = manifest.model_dump_json(indent=2) + "\n"
    (directory / MANIFEST_NAME).write_text(text, encoding="utf-8")


def check_compatible(manifest: Manifest, spec: FunctionSpec) -> dict[str, tuple[Any, Any]]:
    """What differs between the function an adapter was trained for and ``spec``.

    Manifests of version 2 and later hold the field-order-aware
    :func:`~localdistil.spec.schema_hash`
    and fingerprint. Older ones hashed the schema with sorted keys; for them the schema's hash is
    taken anew from the ``output_schema`` they store (in its trained order) and the signature and
    docstring are compared as text.

    Returns:
        ``{field: (trained, now)}`` for the prompt version, the output schema (``field_order``
        where only the order of fields changed), the signature, the docstring and the fingerprint;
        empty when they all match.

    Raises:
        AdapterMismatchError: an old manifest records no output schema, so the adapter cannot be
            checked.
    """
    from localdistil.prompts import PROMPT_VERSION

    changes: dict[str, tuple[Any, Any]] = {}
    if manifest.prompt_version != PROMPT_VERSION:
        changes["prompt_version"] = (manifest.prompt_version, PROMPT_VERSION)
    if manifest.output_schema is not None:
        trained_hash = schema_hash(manifest.output_schema)
    elif manifest.version >= 2 and manifest.schema_hash is not None:
        trained_hash = manifest.schema_hash
    else:
        raise AdapterMismatchError(
            f"The adapter's manifest (version {manifest.version}) records no output schema, so "
            f"localdistil cannot check that it answers in {spec.output_type.__name__}'s fields "
            "and order. Train it again with this localdistil: python -m localdistil train "
            "RECIPE --overwrite.", changes={"output_schema": (None, spec.output_schema)})
    if trained_hash != spec.schema_hash:
        order = field_order_changes(manifest.output_schema or {}, spec.output_schema)
        key = "field_order" if order else "output_schema"
        changes[key] = order or (manifest.output_schema, spec.output_schema)
    if manifest.fingerprint is not None:  # None: trained on records of another tool
        if manifest.signature != spec.signature:
            changes["signature"] = (manifest.signature, spec.signature)
        if manifest.doc != spec.doc:
            changes["doc"] = (manifest.doc, spec.doc)
        if manifest.version >= 2 and manifest.fingerprint != spec.fingerprint and not changes:
            changes["fingerprint"] = (manifest.fingerprint, spec.fingerprint)
    return changes


def field_order_changes(trained: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{model: (trained order, order now)}`` when the two schemas differ only in the order of
    fields (of the top-level model or of a model in ``$defs``); else ``{}``."""
    if schema_hash(trained) == schema_hash(now) or canonical_json(trained) != canonical_json(now):
        return {}  # the same, or different in more than order
    title = now.get("title") or "the return type"
    changes = {}
    models = [(title, trained, now)] + [
        (name, (trained.get("$defs") or {}).get(name, {}), sub)
        for name, sub in (now.get("$defs") or {}).items()]
    for name, old, new in models:
        before, after = list(old.get("properties") or {}), list(new.get("properties") or {})
        if before != after:
            changes[name] = (tuple(before), tuple(after))
    return changes


def mismatch_error(manifest: Manifest, spec: FunctionSpec, changes: dict[str, tuple[Any, Any]],
                   path: Any) -> AdapterMismatchError:
    """An :class:`AdapterMismatchError` that says what changed and how to fix it."""
    parts = []
    if "prompt_version" in changes:
        trained, now = changes["prompt_version"]
        parts.append(f"it was trained on prompts of version {trained} and this localdistil "
                     f"writes version {now}")
    if "field_order" in changes:
        for model, (before, after) in changes["field_order"].items():
            parts.append(f"the field order of {model} changed from ({', '.join(before)}) to "
                         f"({', '.join(after)}), and the grammar would force the model into an "
                         "order it never wrote")
    if "output_schema" in changes:
        parts.append(f"the return type's JSON schema changed ({spec.output_type.__name__})")
    if "signature" in changes:
        trained, now = changes["signature"]
        parts.append(f"the signature changed from {trained!r} to {now!r}")
    if "doc" in changes:
        parts.append("the docstring changed")
    if not parts:
        parts.append("the function's fingerprint changed")
    return AdapterMismatchError(
        f"The adapter at {path} was trained for another version of {spec.name}: "
        f"{'; '.join(parts)}. "
        "Trace the new version and train again, or pass on_mismatch='warn' to use it anyway.",
        path=path,
        changes=changes,
    )


def load_merged(directory: str | os.PathLike[str], *, dtype: Any = None,
                device_map: Any = None) -> tuple[Any, Any, Manifest]:
    """``(model, tokenizer, manifest)``: the adapter's base model with the LoRA weights merged
    in (unmerged adapters decode slower, and merged ones decode exactly as fast as the base),
    in eval mode. The one place that loads an adapter onto its base.

    Args:
        directory: an adapter directory or a run's ``output.dir``.
        dtype: as :func:`~localdistil.models.resolve.load_causal_lm` takes it (None: the
            checkpoint's own).
        device_map: passed to transformers (None: the CPU).

    Raises:
        AdapterError: no complete adapter there, or the base model or tokenizer differ from the
            ones it was trained with.
        ModelError: the base model cannot be found or loaded.
    """
    from peft import PeftModel

    from localdistil.models.resolve import (
        load_causal_lm,
        load_tokenizer,
        model_content_hash,
        resolve_model,
    )

    directory = adapter_dir(directory)
    manifest = read_manifest(directory)
    base_path = resolve_model(manifest.base_model)
    if model_content_hash(base_path) != manifest.base_model_hash:
        raise AdapterError(
            f"The base model {manifest.base_model!r} at {base_path} is not the one the adapter at "
            f"{directory} was trained on (its weights changed). Train the adapter again.",
            path=directory,
        )
    tokenizer = load_tokenizer(directory)
    if tokenizer_hash(tokenizer) != manifest.tokenizer_hash:
        raise AdapterError(f"The tokenizer in {directory} differs from the one the adapter was "
                           "trained with. Train the adapter again.", path=directory)
    base = load_causal_lm(base_path, dtype=dtype, device_map=device_map)
    model = PeftModel.from_pretrained(base, str(directory)).merge_and_unload().eval()
    return model, tokenizer, manifest
