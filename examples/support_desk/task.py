"""The support desk: route a customer's message to a refund, an escalation or an order lookup,
sometimes two at once (a damaged parcel: refund it and hand it to a person).

``inputs(n, seed)`` writes messages from known intents; :func:`route` is the teacher, a rule
that reads the message, as a hand-written router or a hosted model would. ``examples(n, seed)``
gives each message with the calls it should get, so the teacher is checked against the truth.
"""

from __future__ import annotations

import random
import re
from typing import Any, Literal

from pydantic import BaseModel


class Refund(BaseModel):
    """Refund an order."""

    order_id: int
    reason: Literal["damaged", "late", "wrong_item"]


class Escalation(BaseModel):
    """Hand the conversation to a person on a team."""

    team: Literal["billing", "shipping", "returns"]
    urgent: bool


def lookup_order(order_id: int) -> dict[str, Any]:
    """Look up the status of an order.

    Args:
        order_id: the order's number, as the customer gives it.
    """
    return {"order_id": order_id, "status": ("shipped", "packed", "delivered")[order_id % 3]}


TOOLS = [Refund, Escalation, lookup_order]

_REASONS = {"damaged": ["arrived damaged", "came broken", "was crushed in transit"],
            "late": ["is two weeks late", "never arrived on time", "is still not here"],
            "wrong_item": ["contained the wrong item", "had someone else's shoes in it"]}
_TEAMS = {"billing": ["I was charged twice", "my invoice is wrong"],
          "shipping": ["the courier keeps missing me", "the tracking makes no sense"],
          "returns": ["the return label does not work", "my return was refused"]}
_URGENT = ["Please, this is urgent!", "I need someone right now."]
_CALM = ["No rush.", "Whenever you get a chance."]
_GREETINGS = ["", "Hi, ", "Hello team, ", "Good morning. "]


def examples(n: int, seed: int = 0) -> list[tuple[str, list[dict[str, Any]]]]:
    """``n`` messages with the calls each should get (``{"name", "arguments"}``)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        order = rng.randint(1000, 99999)
        greeting = rng.choice(_GREETINGS)
        kind = rng.choice(["refund", "lookup", "escalate", "damaged_and_escalate"])
        if kind == "refund":
            reason = rng.choice(list(_REASONS))
            text = f"{greeting}order {order} {rng.choice(_REASONS[reason])}. I want a refund."
            calls = [_call("Refund", order_id=order, reason=reason)]
        elif kind == "lookup":
            text = f"{greeting}where is my order #{order}?"
            calls = [_call("lookup_order", order_id=order)]
        elif kind == "escalate":
            team, urgent = rng.choice(list(_TEAMS)), rng.random() < 0.5
            text = (f"{greeting}{rng.choice(_TEAMS[team])}. "
                    f"{rng.choice(_URGENT if urgent else _CALM)}")
            calls = [_call("Escalation", team=team, urgent=urgent)]
        else:
            text = (f"{greeting}order {order} {rng.choice(_REASONS['damaged'])}; refund it and "
                    f"have someone from shipping call me. {rng.choice(_URGENT)}")
            calls = [_call("Refund", order_id=order, reason="damaged"),
                     _call("Escalation", team="shipping", urgent=True)]
        out.append((text, calls))
    return out


def inputs(n: int, seed: int = 0) -> list[str]:
    """``n`` customer messages."""
    return [text for text, _ in examples(n, seed)]


def route(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The teacher: read the last message and decide which tools to call."""
    text = messages[-1]["content"]
    lowered = text.lower()
    number = re.search(r"#?(\d{4,})", text)
    urgent = any(cue.lower() in lowered for cue in _URGENT)
    calls = []
    if "refund" in lowered and number:
        reason = next(r for r, cues in _REASONS.items() if any(c in lowered for c in cues))
        calls.append(_call("Refund", order_id=int(number.group(1)), reason=reason))
        if "someone from shipping" in lowered:
            calls.append(_call("Escalation", team="shipping", urgent=urgent))
    elif "where is" in lowered and number:
        calls.append(_call("lookup_order", order_id=int(number.group(1))))
    else:
        team = next(t for t, cues in _TEAMS.items() if any(c.lower() in lowered for c in cues))
        calls.append(_call("Escalation", team=team, urgent=urgent))
    return calls


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}
