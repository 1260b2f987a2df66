"""What several client tests ask: prompts the default 0.5B model answers reliably at temperature 0."""

from __future__ import annotations

from pydantic import BaseModel, Field

CAPITAL = "What is the capital of France? Answer in one sentence."
PERSON = "Give me a person named Ann aged 31."
WEATHER = "What's the weather in Paris?"


class Person(BaseModel):
    """A person."""

    name: str = Field(description="The person's name")
    age: int = Field(description="The person's age in years")


def weather_report(city: str) -> str:
    """The tool's result: a temperature the model cannot guess, so the final answer shows it read it."""
    return f"It is 17 degrees Celsius and sunny in {city}."
