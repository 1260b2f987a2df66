"""Image placeholders spelled out in message text (issue 20): refused, naming the part, when images come."""

from __future__ import annotations

import pytest

from chat.families import FAMILIES
from chat.images import refuse_placeholder_text
from core.errors import APIError
from core.protocol import ImagePart, ImageURL, SystemMessage, TextPart, UserMessage

QWEN = FAMILIES["qwen2"].image_placeholders
IMAGE = ImagePart(ImageURL("data:image/png;base64,AA=="))


@pytest.mark.parametrize("spelling", QWEN)
def test_every_spelling_is_refused_with_the_part_named(spelling: str) -> None:
    messages = [SystemMessage("Be brief."),
                UserMessage([TextPart("Look:"), IMAGE, TextPart(f"is {spelling} here?")])]
    with pytest.raises(APIError) as refused:
        refuse_placeholder_text(messages, QWEN)
    assert refused.value.status == 400 and refused.value.code == "invalid_image_placeholder"
    assert refused.value.param == "messages[1].content[2].text" and spelling in str(refused.value)


def test_plain_string_content_is_named_too() -> None:
    with pytest.raises(APIError) as refused:
        refuse_placeholder_text([SystemMessage("Answer <image> tags."), UserMessage([IMAGE])], QWEN)
    assert refused.value.param == "messages[0].content"


def test_text_without_placeholders_and_families_without_them_pass() -> None:
    messages = [UserMessage([TextPart("An <img> tag, <images>? no: <image/>"), IMAGE])]
    refuse_placeholder_text(messages, QWEN)
    refuse_placeholder_text([UserMessage([TextPart("<image>"), IMAGE])], FAMILIES["chatml"].image_placeholders)
