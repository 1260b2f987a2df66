"""instructor over the openai client, in its tool-call mode and its json_schema response_format mode."""

from __future__ import annotations

import instructor
import pytest
from openai import OpenAI

from tests.clients.shared import PERSON, Person

pytestmark = pytest.mark.default_model


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA], ids=["tools", "json_schema"])
def test_response_model(base_url, mode):
    client = instructor.from_openai(OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300),
                                    mode=mode)
    person = client.chat.completions.create(model="default", response_model=Person, max_retries=0,
                                            messages=[{"role": "user", "content": PERSON}],
                                            temperature=0, max_tokens=80)
    assert isinstance(person, Person)
    assert (person.name, person.age) == ("Ann", 31)
