"""Build the trace record of one call, in the format the Instructions object writes.

One JSON object per line. ``messages`` (the default) is the shape OpenAI-style fine-tuning
tools read, with localdistil's structured block beside it::

    {"messages": [{"role": "system", "content": "Predict the results of this function:..."},
                  {"role": "user", "content": "Return fn(a=133, b=539)"},
                  {"role": "assistant", "function_call": {"name": "Multiply", "arguments": "..."}}],
     "functions": [{"name": "Multiply", "description": "...", "parameters": {...}}],
     "localdistil": {"version": 1, "function": "pkg.mod:fn", "name": "fn", ...,
                     "args": {"a": 133, "b": 539}, "output": {"a": 133, "b": 539, "result": 71687}}}

``tools`` writes the modern ``tool_calls`` + ``tools`` variant; ``raw`` writes the structured
block alone (plus the output schema). Training only needs the block, so every format trains
the same way.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel

from localdistil.prompts import render_completion, render_messages
from localdistil.spec import FunctionSpec

#: Version of the ``localdistil`` block written into every record.
RECORD_VERSION = 1

FinetuneFormat = Literal["messages", "tools", "raw"]
FINETUNE_FORMATS: tuple[str, ...] = ("messages", "tools", "raw")

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class RecordBuilder:
    """Builds the record of one call. Everything that does not change between calls of the
    same function (system prompt, function schema) is prepared once, here."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        finetune_format: str = "messages",
        indent: int | None = None,
        source: str | None = None,
        extra: Mapping[str, Any] | None = None,
        instructions_id: str | None = None,
    ):
        if finetune_format not in FINETUNE_FORMATS:
            raise ValueError(
                f"Unknown finetune_format {finetune_format!r}; "
                f"choose one of {', '.join(FINETUNE_FORMATS)}."
            )
        self.spec = spec
        self.finetune_format = finetune_format
        self.indent = indent
        self._source = source
        self._extra = dict(extra or {})
        self._instructions_id = instructions_id
        model = spec.output_type
        description = (model.__doc__ or "").strip()
        if not description or model.__doc__ == BaseModel.__doc__:
            description = f"The result of {spec.name}."
        self._output_name = _NAME_UNSAFE.sub("_", model.__name__)
        self._function_schema = {
            "name": self._output_name,
            "description": description,
            "parameters": spec.output_schema,
        }

    def build(self, args: dict[str, Any], output: dict[str, Any], *, duration_s: float,
              annotations: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The record of one call, as a JSON-compatible dict; ``annotations`` (e.g. shadow
        mode's comparison) go into the ``localdistil`` block."""
        spec = self.spec
        block: dict[str, Any] = {
            "version": RECORD_VERSION,
            "function": spec.qualname,
            "name": spec.name,
            "signature": spec.signature,
            "doc": spec.doc,
            "fingerprint": spec.fingerprint,
            "schema_hash": spec.schema_hash,
            "args": args,
            "output": output,
            "id": str(uuid.uuid4()),
            "ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "duration_s": round(duration_s, 6),
        }
        if self._instructions_id is not None:
            block["instructions_id"] = self._instructions_id
        if self._extra:
            block["extra"] = self._extra
        if annotations:
            block.update(annotations)
        if self.finetune_format == "raw":
            block["output_schema"] = spec.output_schema
            return {"localdistil": block}

        messages: list[dict[str, Any]] = render_messages(
            name=spec.name,
            args=args,
            style="full",
            signature=spec.signature,
            doc=spec.doc,
            source=self._source,
        )
        arguments = (
            json.dumps(output, ensure_ascii=False, indent=self.indent)
            if self.indent
            else render_completion(output)
        )
        call = {"name": self._output_name, "arguments": arguments}
        if self.finetune_format == "tools":
            tool_call = {"id": "call_0", "type": "function", "function": call}
            messages.append({"role": "assistant", "tool_calls": [tool_call]})
            return {
                "messages": messages,
                "tools": [{"type": "function", "function": self._function_schema}],
                "localdistil": block,
            }
        messages.append({"role": "assistant", "function_call": call})
        return {"messages": messages, "functions": [self._function_schema], "localdistil": block}
