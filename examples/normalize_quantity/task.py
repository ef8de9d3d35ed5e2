"""Normalise a quantity written by a person into a number and a unit.

``normalize_quantity("about 2½ lbs")`` -> ``Quantity(value=2.5, unit=Unit.POUND)``: the kind of
clean-up a recipe site or a shipping form needs before it can compute anything. The messy side
is what people type: digits with or without a space (``300g``), thousands separators
(``1,250 ml``) and decimal commas (``2,5 kg``), fractions (``1 1/2``, ``1-1/2``, ``¾``), number
words (``three hundred and fifty``, ``two and a half``, ``half a``, ``three quarters of a``),
unit spellings (``kg``, ``KG``, ``kilos``, ``kilogrammes``), hedges in front (``approx.``,
``~``) and whatever follows the unit (``of flour``, ``(net)``).

The function is a deterministic rule-based parser. :func:`examples` builds each text *from* a
random structured value, so the right answer of every generated input is known and the parser
is checked against it (``tests/test_examples.py``). The model learns to do the parser's job from
the text alone. Units are normalised, never converted: converting pounds to grams is
arithmetic, which the multiply example shows a 135M model does not learn.
"""

from __future__ import annotations

import random
import re
from enum import Enum

from pydantic import BaseModel


class Unit(str, Enum):
    MILLIGRAM = "mg"
    GRAM = "g"
    KILOGRAM = "kg"
    OUNCE = "oz"
    POUND = "lb"
    MILLILITRE = "ml"
    LITRE = "l"
    TEASPOON = "tsp"
    TABLESPOON = "tbsp"
    CUP = "cup"


class Quantity(BaseModel):
    value: float
    unit: Unit


def normalize_quantity(text: str) -> Quantity:
    """Read a quantity such as '2.5kg', 'three hundred grams' or '1 1/2 cups' as value and unit."""
    words = _normalise_text(text)
    match = _QUANTITY.match(words)
    if match is None:
        raise ValueError(f"no quantity in {text!r}")
    return Quantity(value=_parse_number(match["number"]), unit=_UNIT_BY_ALIAS[match["unit"]])


# --- the parser --------------------------------------------------------------------------------

# Spellings of each unit (lower case; the text is lower-cased before matching): singular first,
# then plurals and abbreviations. The generator draws from the same table.
UNIT_SPELLINGS: dict[Unit, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # unit: (forms for one, forms for several)
    Unit.MILLIGRAM: (("mg", "milligram", "milligramme"),
                     ("mg", "mgs", "milligrams", "milligrammes")),
    Unit.GRAM: (("g", "gram", "gramme", "gr"), ("g", "grams", "grammes", "gr", "grs")),
    Unit.KILOGRAM: (("kg", "kilo", "kilogram", "kilogramme"),
                    ("kg", "kgs", "kilos", "kilograms", "kilogrammes")),
    Unit.OUNCE: (("oz", "ounce"), ("oz", "ounces")),
    Unit.POUND: (("lb", "pound"), ("lb", "lbs", "pounds")),
    Unit.MILLILITRE: (("ml", "millilitre", "milliliter"),
                      ("ml", "mls", "millilitres", "milliliters")),
    Unit.LITRE: (("l", "litre", "liter", "ltr"), ("l", "litres", "liters", "ltrs")),
    Unit.TEASPOON: (("tsp", "teaspoon"), ("tsp", "tsps", "teaspoons")),
    Unit.TABLESPOON: (("tbsp", "tablespoon", "tbs"), ("tbsp", "tbsps", "tablespoons", "tbs")),
    Unit.CUP: (("cup",), ("cups",)),
}
_UNIT_BY_ALIAS = {alias: unit for unit, forms in UNIT_SPELLINGS.items() for alias in sum(forms, ())}
_ALIASES = "|".join(sorted(map(re.escape, _UNIT_BY_ALIAS), key=len, reverse=True))

HEDGES = ("about", "approx.", "approx", "approximately", "around", "roughly", "~", "ca.", "net wt.",
          "net", "amount:", "qty:", "weight:", "volume:")
_HEDGE = "|".join(sorted(map(re.escape, HEDGES), key=len, reverse=True))
# the number, then the unit as a whole word, then anything (an ingredient, a note): ignored
_QUANTITY = re.compile(rf"^(?:(?:{_HEDGE})\s*)*(?P<number>.+?)\s+(?P<unit>{_ALIASES})\.?(?=\W|$)")

_UNICODE_FRACTIONS = {"½": "1/2", "¼": "1/4", "¾": "3/4", "⅛": "1/8"}
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD_VALUES = {word: value for value, word in enumerate(_ONES)} | {
    word: 10 * value for value, word in enumerate(_TENS) if word}
_FRACTION_WORDS = {"a half": 0.5, "one half": 0.5, "half": 0.5, "half a": 0.5, "half an": 0.5,
                   "a quarter": 0.25, "one quarter": 0.25, "quarter": 0.25,
                   "three quarters": 0.75, "three quarter": 0.75}


def _normalise_text(text: str) -> str:
    text = text.strip().lower()
    for char, fraction in _UNICODE_FRACTIONS.items():
        text = re.sub(rf"(\d)?\s*{char}", lambda m, f=fraction: f"{m[1]} {f}" if m[1] else f, text)
    text = re.sub(r"(\d)-(\d+/\d)", r"\1 \2", text)        # 1-1/2 -> 1 1/2
    text = re.sub(r"([a-z])-([a-z])", r"\1 \2", text)      # twenty-five -> twenty five
    text = re.sub(r"(\d)([a-z])", r"\1 \2", text)          # 300g -> 300 g
    return re.sub(r"\s+", " ", text)


def _parse_number(phrase: str) -> float:
    phrase = phrase.strip()
    if match := re.fullmatch(r"(\d+) (\d+)/(\d+)", phrase):
        return int(match[1]) + int(match[2]) / int(match[3])
    if match := re.fullmatch(r"(\d+)/(\d+)", phrase):
        return int(match[1]) / int(match[2])
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", phrase):  # 1,250 (a thousands separator)
        return float(phrase.replace(",", ""))
    if re.fullmatch(r"\d+,\d{1,2}", phrase):                  # 2,5 (a decimal comma)
        return float(phrase.replace(",", "."))
    if re.fullmatch(r"\d*\.?\d+", phrase):
        return float(phrase)
    return _parse_words(phrase)


def _parse_words(phrase: str) -> float:
    phrase = re.sub(r" of(?: an?)?$", "", phrase)              # three quarters of a (cup)
    whole_words, _, fraction_words = phrase.rpartition(" and ")
    if fraction_words not in _FRACTION_WORDS:                 # three hundred and fifty
        whole_words, fraction_words = phrase.replace(" and ", " "), ""
    if not fraction_words and (whole_words in _FRACTION_WORDS or whole_words in ("a", "an")):
        return _FRACTION_WORDS.get(whole_words, 1.0)
    fraction = _FRACTION_WORDS[fraction_words] if fraction_words else 0.0
    total, current = 0, 0
    for word in whole_words.split():
        if word in _WORD_VALUES:
            current += _WORD_VALUES[word]
        elif word in ("hundred", "thousand"):
            current = max(current, 1) * (100 if word == "hundred" else 1000)
            if word == "thousand":
                total, current = total + current, 0
        elif word in ("a", "an") and current == 0:
            current = 1                                           # a hundred
        else:
            raise ValueError(f"not a number: {phrase!r}")
    return float(total + current) + fraction


# --- the generator -----------------------------------------------------------------------------

# (unit, how likely, the values people write for it: (low, high, step))
_RANGES: list[tuple[Unit, float, list[tuple[float, float, float]]]] = [
    (Unit.MILLIGRAM, 0.6, [(5, 1000, 5), (0.5, 10, 0.5)]),
    (Unit.GRAM, 1.5, [(1, 1000, 1), (50, 2000, 50), (1.5, 20, 0.5)]),
    (Unit.KILOGRAM, 1.2, [(1, 50, 1), (0.25, 10, 0.25), (0.1, 9.9, 0.1), (0.05, 5, 0.05)]),
    (Unit.OUNCE, 0.8, [(1, 64, 1), (0.5, 16, 0.25)]),
    (Unit.POUND, 1.0, [(1, 100, 1), (0.25, 12, 0.25), (0.1, 9.9, 0.1)]),
    (Unit.MILLILITRE, 1.0, [(5, 1000, 5), (50, 3000, 50), (1, 100, 1)]),
    (Unit.LITRE, 0.9, [(1, 20, 1), (0.25, 5, 0.25), (0.1, 4, 0.1)]),
    (Unit.TEASPOON, 0.7, [(0.125, 4, 0.125), (1, 6, 1)]),
    (Unit.TABLESPOON, 0.7, [(0.5, 8, 0.5), (1, 10, 1)]),
    (Unit.CUP, 0.9, [(0.25, 6, 0.25), (1, 12, 1)]),
]
_PREFIXES = [("", 10.0), ("about ", 1.0), ("approx. ", 1.0), ("~", 0.7), ("roughly ", 0.5),
             ("around ", 0.5), ("ca. ", 0.3), ("Net wt. ", 0.4), ("Amount: ", 0.4), ("Qty: ", 0.4)]
_SUFFIXES = [("", 10.0), (" of flour", 0.5), (" of sugar", 0.5), (" of milk", 0.4),
             (" of water", 0.4), (" of rice", 0.4), (" butter", 0.3), (" (net)", 0.4),
             (" (approx.)", 0.4), (" total", 0.4), (".", 0.6), (" each", 0.3)]


def _pick(rng: random.Random, weighted: list[tuple[str, float]]) -> str:
    return rng.choices([value for value, _ in weighted], [weight for _, weight in weighted])[0]


def _int_words(n: int, rng: random.Random) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else rng.choice(["-", " "]) + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    head = f"{rng.choice(['one', 'a']) if hundreds == 1 else _ONES[hundreds]} hundred"
    return head if rest == 0 else head + rng.choice([" and ", " "]) + _int_words(rest, rng)


def _decimal(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _render_number(value: float, rng: random.Random) -> tuple[str, bool]:
    """One way a person writes ``value``, and whether a singular unit word follows it."""
    whole, fraction = int(value), round(value - int(value), 3)
    ways: list[tuple[str, bool]] = []
    if fraction == 0:
        ways += [(str(whole), whole == 1)] * 4
        if whole >= 1000:
            ways += [(f"{whole:,}", False)] * 3
        if whole <= 999 and (whole <= 20 or whole % 5 == 0):
            ways += [(_int_words(whole, rng), whole == 1)] * 2
        if whole == 1:
            ways += [(rng.choice(["a", "an"]), True)] * 2   # the article is fixed up below
    else:
        text = _decimal(value)
        ways += [(text, False)] * 4
        tenths = round(fraction * 100) == fraction * 100 and round(fraction * 100) % 10 == 0
        if tenths and rng.random() < 0.3:
            ways += [(text + "0", False)]                   # 2.50
        if len(text.partition(".")[2]) <= 2 and rng.random() < 0.3:
            ways += [(text.replace(".", ","), False)]       # 2,5 (2,125 would read as 2125)
        symbol = {0.5: "½", 0.25: "¼", 0.75: "¾", 0.125: "⅛"}.get(fraction)
        slash = {0.5: "1/2", 0.25: "1/4", 0.75: "3/4", 0.125: "1/8", 0.375: "3/8"}.get(fraction)
        if slash:
            mixed = f"{whole}{rng.choice([' ', '-'])}{slash}" if whole else slash
            ways += [(mixed, False)] * 2
        if symbol:
            ways += [(symbol if whole == 0 else f"{whole}{rng.choice(['', ' '])}{symbol}", False)]
        words = {0.5: ["a half", "one half"], 0.25: ["a quarter"],
                 0.75: ["three quarters"]}.get(fraction)
        if words and whole == 0:
            ways += [(rng.choice(["half a", "a half"]) if fraction == 0.5 else words[0], True)] * 2
            if fraction != 0.5:
                ways += [(words[0] + " of a", True)]
        elif words and whole <= 20:
            ways += [(f"{_int_words(whole, rng)} and {rng.choice(words)}", False)] * 2
    return rng.choice(ways)


_ABBREVIATIONS = {"oz", "lb", "lbs", "tsp", "tbsp", "tbs", "gr", "ltr"}


def _render_unit(unit: Unit, singular: bool, rng: random.Random) -> str:
    one, many = UNIT_SPELLINGS[unit]
    word = rng.choice(one if singular or rng.random() < 0.05 else many)  # some write '5 kilo'
    if len(word) <= 4 and rng.random() < 0.15:
        word = word.upper() if rng.random() < 0.5 else word.capitalize()   # KG, Kg, ML
    if word in _ABBREVIATIONS and rng.random() < 0.1:
        word += "."                                                          # oz.
    return word


def examples(n: int, seed: int = 0) -> list[tuple[str, Quantity]]:
    """``n`` messy texts, each with the quantity it was written from, reproducible from ``seed``."""
    rng = random.Random(seed)
    units, weights = [u for u, _, _ in _RANGES], [w for _, w, _ in _RANGES]
    ranges = {unit: spans for unit, _, spans in _RANGES}
    out = []
    for _ in range(n):
        unit = rng.choices(units, weights)[0]
        low, high, step = rng.choice(ranges[unit])
        value = round(low + step * rng.randint(0, round((high - low) / step)), 3)
        number, singular = _render_number(value, rng)
        word = _render_unit(unit, singular, rng)
        if number in ("a", "an"):
            number = "an" if word[0] in "aeiou" else "a"
        tight = word[0].isalpha() and number[-1].isdigit() and len(word.rstrip(".")) <= 4
        space = "" if tight and rng.random() < 0.4 else " "
        text = _pick(rng, _PREFIXES) + number + space + word
        text += _pick(rng, _SUFFIXES) if not text.endswith(".") else ""
        out.append((text, Quantity(value=value, unit=unit)))
    return out


def inputs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` calls of :func:`normalize_quantity` (keyword arguments), reproducible from ``seed``."""
    return [{"text": text} for text, _ in examples(n, seed)]
