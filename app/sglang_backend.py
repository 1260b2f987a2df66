"""Build the served model for `--engine sglang`: tokenizer and template here, SGLang workers behind."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from chat.families import detect_family
from chat.pipeline import ServedModel
from chat.reasoning import ReasoningSyntax
from chat.template import PromptRenderer
from core.settings import Settings
from multimodal.loader import ImageLoader

log = logging.getLogger("lodestar.backend")


def build_sglang_model(settings: Settings) -> ServedModel:
    from engines.sglang.engine import RuntimeFacts, SGLangEngine
    from engines.sglang.launcher import Launcher
    from engines.sglang.worker import Worker

    model_path, aliases = _model_path(settings)
    launcher = None
    urls = list(settings.sglang.url)
    if settings.sglang.launch:
        launcher = Launcher(model_path, port=settings.sglang.port, python=settings.sglang.python,
                            extra_args=settings.sglang.launch_args)
        launcher.start()
        urls = [launcher.url]
    try:
        if launcher is not None:
            launcher.wait_healthy(settings.sglang.startup_timeout_s)
        facts: RuntimeFacts = _first_facts(urls, model_path, settings)
        tokenizer, model_type, vocab_size, model_context = _tokenizer(settings.sglang.tokenizer or model_path)
        family = detect_family(model_type, tokenizer.chat_template)
        workers = [Worker(url, connect_timeout_s=settings.sglang.connect_timeout_s,
                          read_timeout_s=settings.sglang.read_timeout_s, retry_s=settings.sglang.retry_s,
                          api_key=settings.sglang.api_key) for url in urls]
        engine = SGLangEngine(workers, facts, tokenizer=tokenizer, model_type=model_type,
                              model_context=model_context, aliases=aliases,
                              context_length=settings.backend.context_length, vocab_size=vocab_size,
                              health_interval_s=settings.sglang.health_interval_s,
                              on_close=launcher.stop if launcher is not None else None)
    except BaseException:
        if launcher is not None:
            launcher.stop()
        raise
    if facts.grammar_backend != "llguidance":
        log.warning("the SGLang workers run grammar backend %r, not llguidance: requests with tools or "
                    "response_format will be refused", facts.grammar_backend)
    if not facts.incremental:
        log.info("the SGLang workers stream cumulative output_ids (each event repeats the reply so far); "
                 "--incremental-streaming-output makes relaying cheaper (docs/deployment.md)")
    renderer = PromptRenderer(tokenizer, family, vision=engine.model_info.vision)
    images = ImageLoader(settings.images) if engine.model_info.vision else None
    fingerprint = "fp_" + hashlib.sha256(f"sglang:{facts.model_id}".encode()).hexdigest()[:10]
    log.info("serving %s from %d SGLang worker(s) (family %s, context %d)", facts.model_id, len(urls),
             family.name, engine.model_info.context_length)
    reasoning = ReasoningSyntax.for_model(family, tokenizer, settings.reasoning.prompted_thinking)
    return ServedModel(engine=engine, renderer=renderer, fingerprint=fingerprint, images=images,
                       reasoning=reasoning)


def _model_path(settings: Settings) -> tuple[str, tuple[str, ...]]:
    """A catalog model or GGUF file becomes its converted folder (SGLang loads that); a folder or a hub id
    is passed on as it is."""
    from engines.embedded.catalog import find_catalog_model
    from engines.embedded.loader import resolve_model_folder

    name = settings.backend.model
    if find_catalog_model(name) is not None or Path(name).expanduser().is_file():
        folder, _, aliases = resolve_model_folder(name, settings.data_path())
        return str(folder), tuple(dict.fromkeys((name, *aliases)))
    local = Path(name).expanduser()
    return name, ((local.name.lower(),) if local.is_dir() else ())


def _first_facts(urls: list[str], model_path: str, settings: Settings) -> Any:
    """Blocking: the facts of the first worker that answers, waiting for workers that are still starting."""
    from engines.sglang.engine import read_facts

    deadline = time.monotonic() + settings.sglang.startup_timeout_s
    while True:
        errors = []
        for url in urls:
            try:
                return read_facts(url, Path(model_path).name, api_key=settings.sglang.api_key)
            except Exception as exc:  # not up yet, or not an SGLang server
                errors.append(f"{url}: {exc}")
        if time.monotonic() > deadline:
            raise RuntimeError("no SGLang worker answered: " + "; ".join(errors))
        log.info("waiting for SGLang workers: %s", "; ".join(errors))
        time.sleep(2.0)


def _tokenizer(source: str) -> tuple[Any, str, int, int]:
    """The model's tokenizer, type, vocabulary size (the width of its logits, which SGLang checks
    logit_bias ids against) and context length (as SGLang reads it from the config) from a local folder,
    or from the local Hugging Face cache (which SGLang fills when it downloads the model): Lodestar itself
    never downloads."""
    from transformers import AutoConfig, AutoTokenizer

    from engines.embedded.loader import folder_chat_template

    local = Path(source).expanduser()
    kwargs: dict[str, Any] = {} if local.is_dir() else {"local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if not getattr(tokenizer, "chat_template", None) and local.is_dir():
        tokenizer.chat_template = folder_chat_template(local)
    config = AutoConfig.from_pretrained(source, **kwargs)
    text_config = getattr(config, "text_config", None) or config  # vision models keep it there
    vocab_size = getattr(text_config, "vocab_size", None) or getattr(config, "vocab_size", None) or len(tokenizer)
    return tokenizer, config.model_type, int(vocab_size), model_context_length(text_config)


# Where model configs keep their context length, in the order SGLang prefers them when several are set.
_CONTEXT_KEYS = ("max_sequence_length", "seq_length", "max_seq_len", "model_max_length", "max_position_embeddings")


def model_context_length(config: Any) -> int:
    """A model's context length as SGLang derives it (its model config): the first key set, times a
    linear rope-scaling factor (not for scalings that keep the original length, nor llama3's)."""
    scaling = getattr(config, "rope_scaling", None) or {}
    factor = scaling.get("factor", 1) if scaling else 1
    if "original_max_position_embeddings" in scaling or scaling.get("rope_type") == "llama3":
        factor = 1
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            return int(factor * value)
    return 2048  # SGLang's own fallback
