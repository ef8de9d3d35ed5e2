"""Three functions the training defaults were *not* tuned on (issue 11's defaults study).

Each is the kind of function a user brings, chosen for what makes the defaults' job hard:

``route_ticket(subject) -> Route``
    a small input domain: 72 distinct subjects (8 problems x 9 framings), so 400 traced calls
    hold 72 distinct records, and held-out subjects are new combinations of known parts.
``cast_scene(text) -> Scene``
    a nested list extraction: a list of actors, each with a list of adjectives; the mistake
    to avoid is giving one actor's adjectives to another.
``shipping_label(name, city, country, express) -> Label``
    a function of several arguments: copying, upper-casing, a lookup and a flag.

Every text is built from a random structured value, so each function answers with the value
its input was built from (``route_ticket`` and ``shipping_label`` compute it; ``cast_scene``
parses its own template). ``calls(task, n, seed)`` gives the keyword arguments of ``n`` calls.
"""

from __future__ import annotations

import random
import re
from enum import Enum
from typing import Any

from pydantic import BaseModel

# --- route_ticket: a small domain --------------------------------------------------------------


class Queue(str, Enum):
    ACCOUNT = "account"
    BILLING = "billing"
    BUG = "bug"


class Route(BaseModel):
    queue: Queue
    urgent: bool


_PROBLEMS = {
    "can't log in": Queue.ACCOUNT, "password reset email never arrives": Queue.ACCOUNT,
    "please delete my account": Queue.ACCOUNT, "charged twice this month": Queue.BILLING,
    "refund for my last invoice": Queue.BILLING, "invoice is missing the VAT number": Queue.BILLING,
    "app crashes when I open settings": Queue.BUG, "CSV export comes out empty": Queue.BUG,
}
_FRAMINGS = [("{}", False), ("Re: {}", False), ("Fwd: {}", False), ("question - {}", False),
             ("{} (second time asking)", False), ("URGENT: {}", True), ("{} - ASAP please", True),
             ("!!! {} !!!", True), ("help, {}, need this today", True)]


def route_ticket(subject: str) -> Route:
    """Route a support ticket by its subject line to a queue, and say whether it is urgent."""
    for problem, queue in _PROBLEMS.items():
        if problem in subject:
            urgent = any(cue in subject for cue in ("URGENT", "ASAP", "!!!", "today"))
            return Route(queue=queue, urgent=urgent)
    raise ValueError(f"no known problem in {subject!r}")


def _route_calls(rng: random.Random) -> dict[str, Any]:
    framing, _ = rng.choice(_FRAMINGS)
    return {"subject": framing.format(rng.choice(list(_PROBLEMS)))}


# --- cast_scene: nested lists ------------------------------------------------------------------


class Actor(BaseModel):
    name: str
    adjectives: list[str]


class Scene(BaseModel):
    setting: str
    actors: list[Actor]


_NAMES = ["Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas",
          "Kemal", "Lena", "Marek", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tariq"]
_ADJECTIVES = ["tall", "quiet", "nervous", "cheerful", "tired", "clever", "angry", "young", "old",
               "curious", "proud", "shy", "loud", "calm", "brave", "clumsy", "polite", "grumpy"]
_SETTINGS = ["kitchen", "train station", "library", "harbour", "garden", "hospital corridor",
             "rooftop bar", "market", "classroom", "forest path"]


def _describe(actor: Actor) -> str:
    adjectives = actor.adjectives
    if len(adjectives) == 1:
        return f"{actor.name}, who is {adjectives[0]}"
    return f"{actor.name}, who is {', '.join(adjectives[:-1])} and {adjectives[-1]}"


def _scene_text(scene: Scene) -> str:
    described = [_describe(actor) for actor in scene.actors]
    if len(described) == 1:
        people = described[0]
    else:
        people = "; ".join(described[:-1]) + "; and " + described[-1]
    return f"In the {scene.setting}: {people}."


_SCENE = re.compile(r"In the (?P<setting>[a-z ]+): (?P<people>.*)\.$")
_ACTOR = re.compile(r"(?P<name>[A-Z][a-z]+), who is (?P<adjectives>[a-z ,]+)")


def cast_scene(text: str) -> Scene:
    """List the people in a scene description with the adjectives that describe each."""
    match = _SCENE.match(text)
    if match is None:
        raise ValueError(f"not a scene: {text!r}")
    actors = []
    for part in match["people"].split("; "):
        found = _ACTOR.search(part)
        if found is None:
            raise ValueError(f"no actor in {part!r}")
        adjectives = re.split(r", | and ", found["adjectives"].strip())
        actors.append(Actor(name=found["name"], adjectives=adjectives))
    return Scene(setting=match["setting"], actors=actors)


def _scene_calls(rng: random.Random) -> dict[str, Any]:
    names = rng.sample(_NAMES, rng.randint(1, 3))
    actors = [Actor(name=name, adjectives=rng.sample(_ADJECTIVES, rng.randint(1, 3)))
              for name in names]
    return {"text": _scene_text(Scene(setting=rng.choice(_SETTINGS), actors=actors))}


# --- shipping_label: several arguments ---------------------------------------------------------


class Region(str, Enum):
    EU = "eu"
    AMERICAS = "americas"
    ASIA_PACIFIC = "asia-pacific"


class Label(BaseModel):
    recipient: str
    destination: str
    region: Region
    service: str


_COUNTRIES = {"France": Region.EU, "Germany": Region.EU, "Italy": Region.EU, "Spain": Region.EU,
              "Poland": Region.EU, "Canada": Region.AMERICAS, "Mexico": Region.AMERICAS,
              "Brazil": Region.AMERICAS, "Chile": Region.AMERICAS, "Japan": Region.ASIA_PACIFIC,
              "India": Region.ASIA_PACIFIC, "Australia": Region.ASIA_PACIFIC,
              "Vietnam": Region.ASIA_PACIFIC}
_CITIES = ["Springfield", "Riverton", "Lakewood", "Fairview", "Greenville", "Bristol", "Salem",
           "Milton", "Ashland", "Dover", "Oakdale", "Clayton", "Newport", "Hudson", "Kingston"]
_SURNAMES = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Costa", "Novak", "Haddad", "Byrne",
             "Schmidt", "Rossi", "Kowalski", "Nguyen", "Silva", "Patel", "Dubois"]


def shipping_label(name: str, city: str, country: str, express: bool) -> Label:
    """Write the shipping label of a parcel: recipient, destination line, region and service."""
    return Label(recipient=name, destination=f"{city.upper()}, {country.upper()}",
                 region=_COUNTRIES[country], service="express" if express else "standard")


def _label_calls(rng: random.Random) -> dict[str, Any]:
    return {"name": f"{rng.choice(_NAMES)} {rng.choice(_SURNAMES)}", "city": rng.choice(_CITIES),
            "country": rng.choice(list(_COUNTRIES)), "express": rng.random() < 0.3}


#: task name -> (the function, a generator of one call's keyword arguments)
TASKS = {"route_ticket": (route_ticket, _route_calls), "cast_scene": (cast_scene, _scene_calls),
         "shipping_label": (shipping_label, _label_calls)}


def calls(task: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The keyword arguments of ``n`` random calls of ``task`` (repeats included, as in use)."""
    rng = random.Random(seed)
    make = TASKS[task][1]
    return [make(rng) for _ in range(n)]
