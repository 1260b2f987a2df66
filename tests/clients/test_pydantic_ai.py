"""pydantic-ai (pydantic-ai-slim[openai]) with its OpenAI chat model and provider: one tool, one run."""

from __future__ import annotations

import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.usage import UsageLimits

from tests.clients.shared import WEATHER, weather_report

pytestmark = pytest.mark.default_model


def test_agent_runs_a_tool_and_answers(base_url):
    model = OpenAIChatModel("default", provider=OpenAIProvider(base_url=base_url, api_key="unused"))
    agent = Agent(model, instructions="You are a helpful assistant.",
                  model_settings={"temperature": 0, "max_tokens": 80})
    ran: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        ran.append(city)
        return weather_report(city)

    # Call, result -> answer: two requests, and one to spare (the default limit, 50, would only fail slowly).
    result = agent.run_sync(WEATHER, usage_limits=UsageLimits(request_limit=3))
    assert ran and ran[0] == "Paris"
    # One call, then an answer that uses the result (before issue 19 the answer was a call retyped).
    assert len(ran) == 1 and "17" in result.output, result.output
