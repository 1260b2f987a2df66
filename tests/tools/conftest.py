"""The default model's tokenizer (Qwen2.5: `<tool_call>` is one token) and a grammar compiler over it, once per
session. No model weights are loaded."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chat.families import FAMILIES
from engines.embedded.grammar import GrammarCompiler
from engines.embedded.loader import resolve_model_folder
from tools.grammar import CallMarkers

DATA_DIR = Path("~/.local/share/lodestar").expanduser()


@pytest.fixture(scope="session")
def model_folder() -> Path:
    return resolve_model_folder("default", DATA_DIR)[0]


@pytest.fixture(scope="session")
def qwen_tokenizer(model_folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_folder)


@pytest.fixture(scope="session")
def vocab_size(model_folder: Path) -> int:
    # What the engine uses: the model's embedding rows (config.json), not len(tokenizer).
    return int(json.loads((model_folder / "config.json").read_text())["vocab_size"])


@pytest.fixture(scope="session")
def compiler(qwen_tokenizer: Any, vocab_size: int) -> GrammarCompiler:
    return GrammarCompiler(qwen_tokenizer, vocab_size)


@pytest.fixture(scope="session")
def markers(qwen_tokenizer: Any) -> CallMarkers:
    vocab = qwen_tokenizer.get_vocab()
    return CallMarkers("<tool_call>", "</tool_call>", vocab["<tool_call>"], vocab["</tool_call>"])


@pytest.fixture(scope="session")
def renderer(qwen_tokenizer: Any) -> Any:
    """What plan_tools needs of a PromptRenderer: the family and the tokenizer."""
    return SimpleNamespace(family=FAMILIES["qwen2"], tokenizer=qwen_tokenizer)
