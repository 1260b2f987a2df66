"""The OpenAI Agents SDK (openai-agents) on the chat-completions model class: one function tool, one run."""

from __future__ import annotations

import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from tests.clients.shared import WEATHER, weather_report

pytestmark = pytest.mark.default_model

set_tracing_disabled(True)


def test_agent_runs_a_tool_and_answers(base_url):
    ran: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        ran.append(city)
        return weather_report(city)

    model = OpenAIChatCompletionsModel(
        model="default", openai_client=AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300))
    agent = Agent(name="assistant", instructions="You are a helpful assistant.", model=model, tools=[get_weather],
                  model_settings=ModelSettings(temperature=0, max_tokens=80))
    result = Runner.run_sync(agent, WEATHER, max_turns=3)  # call, result -> answer: two turns, and one to spare
    assert ran and ran[0] == "Paris"
    # One call, then an answer that uses the result (before issue 19 it ran to max_turns).
    assert len(ran) == 1 and "17" in result.final_output, result.final_output
