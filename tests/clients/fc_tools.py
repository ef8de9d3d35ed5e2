"""The tools of functioncalming's README, shared by the test's tool set (served by localdistil)
and the functioncalming client script that calls it: plain Pydantic, importable by both
interpreters (the client runs on Python >= 3.12, without localdistil)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Actor(BaseModel):
    """A person or thing taking part in a situation."""

    name: str
    adjectives: list[str]


class Situation(BaseModel):
    """A situation or event, with the actors taking part in it."""

    actors: list[Actor]
    action: str


class EmojiTranslation(BaseModel):
    """The user's message, said in emojis."""

    translation: str = Field(description="the message in emojis")


def get_weather(city: str, country: str = "US") -> str:
    """Get the current weather for a city.

    Args:
        city: the city's name.
        country: the country's code.
    """
    return f"Sunny, 22 C in {city}, {country}"


TOOLS = [Situation, EmojiTranslation, get_weather]
