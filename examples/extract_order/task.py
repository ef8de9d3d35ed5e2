"""Extract an order from a customer's short message into a nested model.

``extract_order("Hi, this is Mei Chen. Could you send 2 mugs and a stapler by March 3, 2026?")``
-> ``Order(customer="Mei Chen", items=[Item(name="mug", quantity=2), Item(name="stapler",
quantity=1)], priority=Priority.NORMAL, delivery_date=date(2026, 3, 3))``.

The output exercises what extraction needs: a list of sub-models, an enum and an optional
field, with normalisation on the way (plural product words back to the catalogue's name, number
words and articles to integers, four date formats to one, cue phrases to a priority, including
"not urgent" meaning low).

The function is a deterministic rule-based extractor of the kind a shop writes first: a product
catalogue, anchor phrases for the name, cue words for the priority, patterns for the date.
:func:`examples` builds each message *from* a random order, so the right answer of every
generated input is known and the extractor is checked against it (``tests/test_examples.py``).
The model learns the extractor's job from the text alone.
"""

from __future__ import annotations

import random
import re
from datetime import date
from enum import Enum

from pydantic import BaseModel


class Priority(str, Enum):
    LOW = "low"
    NORMAL = "normal"
    URGENT = "urgent"


class Item(BaseModel):
    name: str
    quantity: int


class Order(BaseModel):
    customer: str
    items: list[Item]
    priority: Priority
    delivery_date: date | None = None


def extract_order(message: str) -> Order:
    """Extract the customer, the items, the priority and the delivery date (if one is given)."""
    return Order(customer=_customer(message), items=_items(message), priority=_priority(message),
                 delivery_date=_delivery_date(message))


# --- the extractor -----------------------------------------------------------------------------

# catalogue name -> its plural, as customers write them
CATALOGUE = {
    "mug": "mugs", "notebook": "notebooks", "stapler": "staplers", "desk lamp": "desk lamps",
    "usb cable": "usb cables", "water bottle": "water bottles", "mouse pad": "mouse pads",
    "keyboard": "keyboards", "monitor stand": "monitor stands", "pencil case": "pencil cases",
    "whiteboard marker": "whiteboard markers", "backpack": "backpacks", "umbrella": "umbrellas",
    "phone charger": "phone chargers", "coffee grinder": "coffee grinders",
    "tea towel": "tea towels", "candle": "candles", "ballpoint pen": "ballpoint pens",
    "printer cartridge": "printer cartridges", "extension cord": "extension cords",
    "box of staples": "boxes of staples",
    "pack of sticky notes": "packs of sticky notes", "ream of paper": "reams of paper",
    "pair of scissors": "pairs of scissors",
}
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
                 "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
_PRODUCT_BY_FORM = {form: name for name, plural in CATALOGUE.items() for form in (name, plural)}
_FORMS = "|".join(sorted(map(re.escape, _PRODUCT_BY_FORM), key=len, reverse=True))
_COUNT = r"\d+|" + "|".join(_NUMBER_WORDS)
_ITEM = re.compile(rf"\b(?:(?P<count>{_COUNT})\s*(?:x\s*)?(?P<product>{_FORMS})"
                   rf"|(?P<product2>{_FORMS})\s*(?:x\s*|: ?)(?P<count2>\d+))\b", re.IGNORECASE)

# where people put their name: after an introduction, before "here", after a sign-off
_NAME = r"(?P<name>[A-Z][\w'’-]*(?: [A-Z][\w'’-]*)?)"
_NAME_PATTERNS = [
    re.compile(rf"(?i:this is|my name is|order for|from:|customer:) {_NAME}"),
    re.compile(rf"\b{_NAME} here\b"),
    re.compile(rf"(?i:thanks|cheers|regards|thank you), {_NAME}\W*$"
               rf"|(?:^|\n)- {_NAME.replace('<name>', '<name2>')}"),
]

_LOW_CUES = ("no rush", "not urgent", "no hurry", "whenever", "low priority")
_URGENT_CUES = ("urgent", "asap", "as soon as possible", "rush", "right away", "high priority")

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
_MONTH = {name.lower(): number for number, name in enumerate(MONTHS, 1)} | {
    name[:3].lower(): number for number, name in enumerate(MONTHS, 1)}
_MONTH_RE = "|".join(sorted(_MONTH, key=len, reverse=True))
_DATES = [  # (pattern, which groups are year, month, day)
    (re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b"), (1, 2, 3)),
    (re.compile(rf"\b({_MONTH_RE})\.? (\d{{1,2}})(?:st|nd|rd|th)?,? (\d{{4}})\b", re.IGNORECASE),
     (3, 1, 2)),
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?(?: of)? ({_MONTH_RE})\.?,? (\d{{4}})\b",
                re.IGNORECASE),
     (3, 2, 1)),
]


def _customer(message: str) -> str:
    for pattern in _NAME_PATTERNS:
        if match := pattern.search(message):
            return match["name"] or match["name2"]
    raise ValueError(f"no customer name in {message!r}")


def _items(message: str) -> list[Item]:
    items = []
    for match in _ITEM.finditer(message):
        count = (match["count"] or match["count2"]).lower()
        product = _PRODUCT_BY_FORM[(match["product"] or match["product2"]).lower()]
        items.append(Item(name=product, quantity=_NUMBER_WORDS.get(count) or int(count)))
    if not items:
        raise ValueError(f"no item from the catalogue in {message!r}")
    return items


def _priority(message: str) -> Priority:
    text = message.lower()
    if any(cue in text for cue in _LOW_CUES):
        return Priority.LOW
    if any(re.search(rf"\b{cue}\b", text) for cue in _URGENT_CUES):
        return Priority.URGENT
    return Priority.NORMAL


def _delivery_date(message: str) -> date | None:
    for pattern, (year, month, day) in _DATES:
        if match := pattern.search(message):
            month_text = match[month]
            number = int(month_text) if month_text.isdigit() else _MONTH[month_text.lower()]
            return date(int(match[year]), number, int(match[day]))
    return None


# --- the generator -----------------------------------------------------------------------------

FIRST_NAMES = ["Anna", "Mei", "Oluwaseun", "Liam", "Sofia", "Rahul", "Chloe", "Mateo", "Aisha",
               "Jonas", "Priya", "Tom", "Fatima", "Lucas", "Yuki", "Emma", "Kwame", "Ines", "Noah",
               "Zara", "Diego", "Hannah", "Omar", "Elif", "Sam", "Grace", "Ivan", "Nadia", "Ben",
               "Lena", "José", "Siobhan", "Arjun", "Marta", "Kenji", "Amara", "Felix", "Rosa",
               "Tariq", "Maya"]
LAST_NAMES = ["Smith", "Chen", "Adeyemi", "Murphy", "Rossi", "Sharma", "Dubois", "García", "Khan",
              "Becker", "Patel", "Nguyen", "Kowalski", "O'Neill", "Tanaka", "Johansson", "Mensah",
              "Silva", "Cohen", "Yilmaz", "Novak", "Brown", "Haddad", "Fischer", "Lopez", "Okafor",
              "Petrov", "Martin", "Williams", "Costa", "Ahmed", "Schmidt", "Kim", "Moreau",
              "Ivanova", "Baker", "Reyes", "Andersen", "Mwangi", "Walsh"]

_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
          9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}
_URGENT_PHRASES = ["It's urgent.", "Urgent, please.", "We need them ASAP.",
                   "Please send as soon as possible.", "Rush order, please.",
                   "Please ship right away.", "High priority."]
_LOW_PHRASES = ["No rush.", "Not urgent.", "No hurry at all.", "Whenever you can.", "Low priority."]
_NEUTRAL_PHRASES = ["Thanks!", "Many thanks.", "Standard shipping is fine.",
                    "Same address as last time.", "Please confirm.", ""]


def _count_text(quantity: int, product: str, rng: random.Random) -> str:
    words = product.split()
    form = product if quantity == 1 else CATALOGUE[product]
    if rng.random() < 0.15:
        form = " ".join(w.upper() if w == "usb" else w.capitalize() for w in form.split())
    elif "usb" in words:
        form = form.replace("usb", "USB")
    if quantity == 1 and rng.random() < 0.5:
        count = "an" if product[0] in "aeio" or product == "umbrella" else "a"  # a USB cable
    elif quantity <= 12 and rng.random() < 0.35:
        count = _WORDS[quantity]
    else:
        count = str(quantity)
    return f"{count} {form}"


def _items_text(items: list[Item], rng: random.Random) -> str:
    if rng.random() < 0.2:  # the terse form: mug x2, stapler x1
        sep = rng.choice([" x", " x ", ": "])
        return ", ".join(f"{item.name}{sep}{item.quantity}" for item in items)
    parts = [_count_text(item.quantity, item.name, rng) for item in items]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + rng.choice([" and ", ", and ", ", "]) + parts[-1]


def _date_text(day: date, rng: random.Random) -> str:
    month = MONTHS[day.month - 1]
    short = month[:3] if rng.random() < 0.3 else month
    suffix = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}.get(day.day, "th")
    return rng.choice([
        day.isoformat(),
        f"{short} {day.day}, {day.year}",
        f"{day.day} {short} {day.year}",
        f"the {day.day}{suffix} of {month} {day.year}",
    ])


_TEMPLATES = [
    "Hi, this is {name}. Could you send {items}{by_date}? {priority}",
    "Order for {name}: {items}.{date_sentence} {priority}",
    "{lead}{name} here, we need {items}{by_date}.",
    "Please ship {items}{by_date}. {priority} Thanks, {name}",
    "From: {name}\nItems: {items}\n{date_line}{priority}",
    "Hello! I'd like to order {items}.{date_sentence} {priority}\n- {name}",
    "My name is {name} and I want {items}{by_date}. {priority}",
    "Customer: {name}. {items}{by_date}, please. {priority}",
    "Hey, can I get {items}?{date_sentence} {priority} Cheers, {name}",
]


def _random_order(rng: random.Random) -> Order:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    customer = first if rng.random() < 0.15 else f"{first} {last}"
    count = rng.choices([1, 2, 3, 4], [4, 4, 2, 1])[0]
    products = rng.sample(sorted(CATALOGUE), count)
    items = []
    for product in products:  # mostly a few, sometimes a dozen, now and then dozens
        spans = [rng.randint(1, 3), rng.randint(4, 12), rng.randint(13, 60)]
        items.append(Item(name=product, quantity=rng.choices(spans, [6, 3, 1])[0]))
    priority = rng.choices(list(Priority), [2, 5, 3])[0]
    delivery = None
    if rng.random() < 0.55:
        delivery = date.fromordinal(date(2025, 6, 1).toordinal() + rng.randint(0, 540))
    return Order(customer=customer, items=items, priority=priority, delivery_date=delivery)


def _render(order: Order, rng: random.Random) -> str:
    phrases = {Priority.URGENT: _URGENT_PHRASES, Priority.LOW: _LOW_PHRASES,
               Priority.NORMAL: _NEUTRAL_PHRASES}[order.priority]
    when = _date_text(order.delivery_date, rng) if order.delivery_date else ""
    by = rng.choice(["by", "before", "on"])
    fields = {
        "name": order.customer,
        "items": _items_text(order.items, rng),
        "priority": rng.choice(phrases),
        "lead": "" if order.priority is Priority.NORMAL else rng.choice(phrases) + " ",
        "by_date": f" {by} {when}" if when else "",
        "date_sentence": (f" {rng.choice(['Delivery by', 'Deliver on', 'Needed by'])} {when}."
                          if when else ""),
        "date_line": f"Deliver by: {when}\n" if when else "",
    }
    text = rng.choice(_TEMPLATES).format(**fields)
    return re.sub(r"[ ]+", " ", text).strip().replace(" \n", "\n")


def examples(n: int, seed: int = 0) -> list[tuple[str, Order]]:
    """``n`` messages, each with the order it was written from, reproducible from ``seed``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        order = _random_order(rng)
        out.append((_render(order, rng), order))
    return out


def inputs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` calls of :func:`extract_order` (keyword arguments), reproducible from ``seed``."""
    return [{"message": text} for text, _ in examples(n, seed)]
