"""Export a trained adapter for serving at scale, outside localdistil.

Two routes, both from a run's ``output.dir`` (or its ``adapter/``):

- :func:`export_merged` writes a plain Hugging Face model with the LoRA weights merged into the
  base (safetensors, config, generation config, tokenizer with its chat template), which
  ``AutoModelForCausalLM.from_pretrained(out)``, vLLM, SGLang or TGI load with no PEFT at all.
  It is written into a temporary directory and renamed into place, and carries
  ``localdistil-merged.json`` (the adapter's manifest and where it came from) for provenance.
- :func:`vllm_command` gives the ``vllm serve`` command line that serves the adapter unmerged
  on top of its base model (many adapters can share one base that way), from the manifest:
  the base model's hub id when it came from the hub, else the local directory it was trained
  on; the adapter's name is the function's; ``--max-lora-rank`` is the adapter's rank rounded
  up to a rank vLLM accepts (:data:`VLLM_LORA_RANKS`).

Either way the served model answers the prompts localdistil renders (``prompts.py``, the style
in the manifest) and should be constrained by the manifest's ``output_schema`` (e.g. vLLM's
structured outputs), as dispatch does.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from localdistil.errors import AdapterError, LocaldistilError
from localdistil.models.adapter import (
    Manifest,
    adapter_dir,
    load_merged,
    read_manifest,
    writing_directory,
)

#: The values vLLM's ``--max-lora-rank`` accepts (``vllm/config/lora.py``, ``MaxLoRARanks``).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: The provenance file written beside a merged model (not ``localdistil.json``: the directory
#: holds no adapter, and dispatch must not take it for one).
MERGED_MANIFEST_NAME = "localdistil-merged.json"


def export_merged(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Merge the adapter at ``run_dir`` into its base model and save the result in ``out``.

    The base model is the one the adapter was trained on (its content hash is checked), loaded
    in its own dtype on the CPU; the merged weights are saved in that dtype.

    Args:
        run_dir: a training run's ``output.dir`` or its ``adapter/`` directory.
        out: the directory to write; it must not exist or be empty, unless ``overwrite``.
        overwrite: replace an existing ``out`` (only once the new model is whole).

    Returns:
        ``out``.

    Raises:
        AdapterError: no complete adapter at ``run_dir``, or the base model changed since training.
        ModelError: the base model cannot be found or loaded.
        LocaldistilError: ``out`` exists and ``overwrite`` is false.
    """
    directory = adapter_dir(run_dir)
    out = Path(out)
    if out.resolve() == directory.resolve() or directory.resolve() in out.resolve().parents:
        raise LocaldistilError(
            "export: write the merged model outside the adapter directory "
            f"{directory}, not to {out}."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise LocaldistilError(
            f"export: {out} already exists. "
            "Pass --overwrite to replace it, or choose another directory."
        )
    model, tokenizer, manifest = load_merged(directory)
    with writing_directory(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        provenance: dict[str, Any] = {
            "merged_from": str(directory.resolve()),
            "manifest": manifest.model_dump(mode="json"),
        }
        (staging / MERGED_MANIFEST_NAME).write_text(
            json.dumps(provenance, indent=2) + "\n", encoding="utf-8"
        )
    return out


def vllm_command(run_dir: str | os.PathLike[str]) -> str:
    """The ``vllm serve`` command line that serves the adapter at ``run_dir`` without merging.

    Raises:
        AdapterError: no complete adapter at ``run_dir``, or its rank is above what vLLM serves.
    """
    directory = adapter_dir(run_dir)
    manifest = read_manifest(directory)
    rank = _lora_rank(directory)
    max_rank = next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), None)
    if max_rank is None:
        raise AdapterError(
            f"The adapter at {directory} has LoRA rank {rank}, "
            f"above the {VLLM_LORA_RANKS[-1]} vLLM serves. "
            "Serve a merged model instead: localdistil export RUN_DIR --merged OUT.",
            path=directory,
        )
    parts = [
        "vllm", "serve", _served_base(manifest), "--enable-lora",
        "--lora-modules", f"{manifest.name}={directory.resolve()}",
        "--max-lora-rank", str(max_rank),
    ]
    return " ".join(shlex.quote(part) for part in parts)


def _lora_rank(directory: Path) -> int:
    """The largest LoRA rank in ``adapter_config.json`` (``r``, or a per-module
    ``rank_pattern``)."""
    try:
        config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        return max([
            int(config["r"]),
            *(int(r) for r in (config.get("rank_pattern") or {}).values()),
        ])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterError(
            f"{directory / 'adapter_config.json'} is unreadable ({exc}); train the adapter again.",
            path=directory,
        ) from exc


def _served_base(manifest: Manifest) -> str:
    """The hub id when the base model came from the Hugging Face hub (its cache directory is
    ``models--<org>--<name>``), else the local directory it was trained on: an alias or a
    ``.gguf`` file means the converted checkpoint, which only localdistil knows about."""
    hub_cache_name = "models--" + manifest.base_model.replace("/", "--")
    if "/" in manifest.base_model and hub_cache_name in Path(manifest.base_model_path).parts:
        return manifest.base_model
    return manifest.base_model_path


__all__ = ["MERGED_MANIFEST_NAME", "VLLM_LORA_RANKS", "export_merged", "vllm_command"]
