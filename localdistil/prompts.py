"""Every piece of text the model reads or writes is produced here, and only here.

The dataset builder and dispatch call the same functions with the same style, so the tokens a
model was trained on are exactly the tokens it sees when it answers. The style and
:data:`PROMPT_VERSION` are recorded in the adapter manifest.

Styles:

``full``
    instructor's wording: ``Predict the results of this function:`` followed by the signature
    and docstring, then ``Return fn(a=133, b=539)``. Trace files are written in this style so
    they read well and work with tools that expect instructor's files.
``compact`` (the default for training and dispatch)
    a short fixed system line and the call alone. A fine-tuned model does not need the
    signature or schema (the grammar enforces the schema), and every prompt token saved is
    saved again at every dispatch.

A call is rendered canonically, ``fn(a=133, b=539)``: every argument by keyword, in signature
order, values as compact JSON with sorted object keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic_core import to_json

from localdistil.spec import canonical_json

PromptStyle = Literal["compact", "full"]

#: Every style ``render_messages`` accepts.
PROMPT_STYLES: tuple[str, ...] = ("compact", "full")

#: Bumped whenever the text of any style changes: adapters record it, dispatch checks it.
PROMPT_VERSION = 2

FULL_SYSTEM_HEADER = "Predict the results of this function:"
#: A fine-tuned model needs no instructions, but without a system message some chat templates
#: (SmolLM2's) insert a default one of ~20 tokens; one word costs 5 with the template's markup.
COMPACT_SYSTEM = "JSON"


def render_call(name: str, args: Mapping[str, Any]) -> str:
    """``fn(a=133, b=539)``: the canonical text of a call with JSON-compatible arguments."""
    rendered = ", ".join(f"{key}={canonical_json(value)}" for key, value in args.items())
    return f"{name}({rendered})"


def render_function(signature: str, doc: str | None) -> str:
    """The signature followed by the docstring in triple quotes, as instructor shows it."""
    if not doc:
        return signature
    return f'{signature}\n"""\n{doc}\n"""'


def render_messages(
    *,
    name: str,
    args: Mapping[str, Any],
    style: str = "compact",
    signature: str | None = None,
    doc: str | None = None,
    source: str | None = None,
) -> list[dict[str, str]]:
    """The prompt for one call: a system and a user message.

    Args:
        name: the function's prompt name.
        args: the bound, JSON-compatible arguments.
        style: one of :data:`PROMPT_STYLES`.
        signature: the rendered signature (``full`` style needs it).
        doc: the docstring (``full`` style shows it).
        source: the function's source code, shown instead of the signature in the ``full``
            style when tracing with ``include_code_body=True``.

    Raises:
        ValueError: unknown style, or ``full`` without a signature.
    """
    call = render_call(name, args)
    if style == "compact":
        return [
            {"role": "system", "content": COMPACT_SYSTEM},
            {"role": "user", "content": call},
        ]
    if style == "full":
        if signature is None and source is None:
            raise ValueError(f"The 'full' prompt style needs the signature of {name}.")
        body = source if source is not None else render_function(signature or "", doc)
        return [
            {"role": "system", "content": f"{FULL_SYSTEM_HEADER}\n\n{body}"},
            {"role": "user", "content": f"Return {call}"},
        ]
    raise ValueError(f"Unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}.")


def render_completion(output: Mapping[str, Any]) -> str:
    """The canonical compact JSON of an output: the text Pydantic's ``model_dump_json`` writes
    (keys in schema order, no whitespace, Pydantic's float and escape forms).

    This is the text training teaches and the only form the dispatch grammar accepts.
    """
    return to_json(output).decode("utf-8")


def encode_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of a prompt, ending where the assistant's answer begins.

    Training and dispatch both call this, so the model answers from exactly the context it
    was trained on.
    """
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def end_of_turn(tokenizer: Any) -> str:
    """The text the chat template puts after an assistant answer, up to and including the
    end-of-turn token (``<|im_end|>`` for ChatML templates); the tokenizer's EOS token where
    the template adds nothing. Training puts it in the labels, or the model never learns to stop.
    """
    marker = "\x00LOCALDISTIL\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    suffix = text[text.index(marker) + len(marker):] if marker in text else ""
    eos = tokenizer.eos_token or ""
    if eos and eos in suffix:
        return suffix[: suffix.index(eos) + len(eos)]
    return suffix.rstrip() or eos


def encode_completion(tokenizer: Any, completion: str) -> list[int]:
    """Token ids of an answer followed by the end-of-turn text, encoded on their own so that
    no token merges across the prompt/answer boundary (dispatch generates them the same way)."""
    return list(tokenizer.encode(completion + end_of_turn(tokenizer), add_special_tokens=False))


# -- tool sets ---------------------------------------------------------------------------------
#
# A tool set is rendered as a function of one string parameter, the user's message:
# ``support(user_message="Refund order 17")``. Its signature and its tool list take the place of
# a function's signature and docstring, so the ``compact`` and ``full`` styles, the manifest,
# ``Engine.call_prompt`` and the server's argument parsing all work on it unchanged.

#: The one parameter of a tool set's prompt.
TOOLSET_PARAMETER = "user_message"


def toolset_signature(toolset_name: str) -> str:
    """``def support(user_message: str) -> ToolCalls``: a tool set as a function."""
    return f"def {toolset_name}({TOOLSET_PARAMETER}: str) -> ToolCalls"


def toolset_doc(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool list the ``full`` style shows: each tool's name and the first line of its
    description (``tools``: mappings with ``name`` and, optionally, ``description``)."""
    lines = ["Answer with calls of these tools:"]
    for tool in tools:
        description = (tool.get("description") or "").strip().splitlines()
        lines.append(f"- {tool['name']}: {description[0]}" if description else f"- {tool['name']}")
    return "\n".join(lines)


#: What follows a refused answer in a repair turn: the error, then the request to answer again.
REPAIR_REQUEST = "Error: {error}\nCall the tools again, correctly."


def repair_turns(repairs: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The turns that feed refused answers back: for each ``{"output", "error"}``, the answer
    as the assistant wrote it, then :data:`REPAIR_REQUEST` as the user's reply."""
    turns = []
    for repair in repairs:
        turns.append({"role": "assistant", "content": repair["output"]})
        turns.append({"role": "user", "content": REPAIR_REQUEST.format(error=repair["error"])})
    return turns


def render_toolset_messages(
    toolset_name: str,
    tools: Sequence[Mapping[str, Any]],
    user_message: str,
    style: str = "compact",
    repairs: Sequence[Mapping[str, str]] = (),
) -> list[dict[str, str]]:
    """The prompt of one tool-set call: :func:`render_messages` of the call
    ``toolset_name(user_message=...)``, with :func:`toolset_signature` and :func:`toolset_doc`
    as the signature and docstring, then the :func:`repair_turns` of answers refused before.
    The dataset builder, dispatch and the server render it through here (or through the same
    ``render_messages`` call, from a manifest)."""
    return render_messages(
        name=toolset_name,
        args={TOOLSET_PARAMETER: user_message},
        style=style,
        signature=toolset_signature(toolset_name),
        doc=toolset_doc(tools),
    ) + repair_turns(repairs)
