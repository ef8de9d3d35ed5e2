"""Triage a support ticket by its subject line: which team's queue, and which order it is about.

``triage_ticket("Re: charged twice for order #48213")`` ->
``Ticket(queue=Queue.BILLING, order=48213)``: the first thing a help desk does with every ticket,
and the kind of function a team writes as keyword rules, then hands to a hosted model, and pays
for on every ticket. Distilled, it runs on the help desk's own machine.

The function is keyword rules (:data:`QUEUE_KEYWORDS`) and a pattern for the order number.
:func:`inputs` builds subjects the way people write them: one of 16 problems (most with an order
number, a product or an amount in it), framed one of eight ways (``Re:``, ``Fwd:``,
``URGENT:``, ``... - ASAP please``, ...): 600 calls hold 468 distinct subjects, and most new
calls are subjects never seen. The model learns the rules from the subjects alone.
"""

from __future__ import annotations

import random
import re
from enum import Enum

from pydantic import BaseModel


class Queue(str, Enum):
    ACCOUNT = "account"
    BILLING = "billing"
    SHIPPING = "shipping"
    BUG = "bug"


class Ticket(BaseModel):
    queue: Queue
    order: int | None


#: the words that send a ticket to each queue, tried in this order
QUEUE_KEYWORDS = {
    Queue.BILLING: ("charged", "refund", "invoice", "payment", "subscription"),
    Queue.SHIPPING: ("parcel", "delivery", "tracking", "package", "courier"),
    Queue.ACCOUNT: ("log in", "password", "account", "two-factor", "email address"),
    Queue.BUG: ("crash", "error", "broken", "blank", "freezes"),
}
#: an order number: five digits after "#" or "order "
ORDER_NUMBER = re.compile(r"(?:#|order )(\d{5})\b")


def triage_ticket(subject: str) -> Ticket:
    """Route a support ticket by its subject line to a queue, with the order number it names."""
    lowered = subject.lower()
    found = ORDER_NUMBER.search(lowered)
    order = int(found[1]) if found else None
    for queue, keywords in QUEUE_KEYWORDS.items():
        if any(keyword in lowered for keyword in keywords):
            return Ticket(queue=queue, order=order)
    raise ValueError(f"no queue's keyword in {subject!r}")


# -- inputs --------------------------------------------------------------------------------------

_PRODUCTS = ["the iOS app", "the Android app", "the web dashboard", "the desktop client",
             "the API", "the browser extension"]
#: problems, each with exactly one queue's keyword; {order}, {product}, {amount} are filled in
_PROBLEMS = [
    "charged twice for order #{order}", "refund for order #{order} still pending",
    "invoice for order #{order} lacks the VAT number", "need a refund of {amount}",
    "parcel for order #{order} never arrived", "delivery address on order #{order} is wrong",
    "tracking number for #{order} doesn't work", "package arrived damaged",
    "can't log in to {product}", "password reset email never arrives",
    "please close my account", "forgot my password for {product}",
    "{product} crashes on start", "error 500 when exporting order #{order}",
    "export button broken in {product}", "{product} freezes when I open settings",
]
#: ways people frame a subject
_FRAMINGS = ["{}", "Re: {}", "Fwd: {}", "question - {}", "URGENT: {}", "{} - ASAP please",
             "hi, {} - thanks", "{} (second time asking)"]


def inputs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """The keyword arguments of ``n`` random calls (repeats possible, as in use)."""
    return [{"subject": subject} for subject, _ in examples(n, seed)]


def examples(n: int, seed: int = 0) -> list[tuple[str, Ticket]]:
    """``n`` random subjects with the ticket each should get, worked out from how it was built
    (not by :func:`triage_ticket`, so the tests can check the function against it)."""
    rng = random.Random(seed)
    built = []
    for _ in range(n):
        template = rng.choice(_PROBLEMS)
        order = rng.randint(10000, 99999)
        problem = template.format(
            order=order, product=rng.choice(_PRODUCTS),
            amount=f"${rng.randint(5, 400)}.{rng.choice(['00', '99', '50'])}")
        subject = rng.choice(_FRAMINGS).format(problem)
        built.append((subject, Ticket(queue=_QUEUE_OF[template],
                                      order=order if "{order}" in template else None)))
    return built


#: each problem's queue, by position: four problems per queue, in QUEUE_KEYWORDS' order
_QUEUE_OF = {problem: list(QUEUE_KEYWORDS)[index // 4] for index, problem in enumerate(_PROBLEMS)}
