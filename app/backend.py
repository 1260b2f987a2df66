"""Build the served model (engine + prompt renderer) that the settings ask for."""

from __future__ import annotations

import hashlib
import logging

from chat.families import detect_family
from chat.pipeline import ServedModel
from chat.reasoning import ReasoningSyntax
from chat.template import PromptRenderer
from core.settings import Settings
from multimodal.loader import ImageLoader

log = logging.getLogger("lodestar.backend")


def build_served_model(settings: Settings) -> ServedModel:
    """Load weights and start the engine (blocking: run it off the event loop)."""
    if settings.backend.engine == "sglang":
        from app.sglang_backend import build_sglang_model

        return build_sglang_model(settings)
    from engines.embedded.engine import EmbeddedEngine
    from engines.embedded.kernels import use_one_torch_thread
    from engines.embedded.loader import load_model

    use_one_torch_thread()  # only the scheduler's thread computes in parallel
    loaded = load_model(settings.backend.model, settings.data_path(), quantize=settings.backend.quantize)
    family = detect_family(loaded.model.config.model_type, loaded.tokenizer.chat_template)
    renderer = PromptRenderer(loaded.tokenizer, family, vision=loaded.vision)
    engine = EmbeddedEngine(loaded, scheduler=settings.scheduler, context_length=settings.backend.context_length)
    images = ImageLoader(settings.images) if engine.model_info.vision else None
    kernels = loaded.kernels.name if loaded.kernels is not None else settings.backend.quantize
    fingerprint = "fp_" + hashlib.sha256(f"{loaded.model_id}:{kernels}".encode()).hexdigest()[:10]
    log.info("serving %s (family %s, context %d, %s)", loaded.model_id, family.name,
             engine.model_info.context_length, kernels)
    reasoning = ReasoningSyntax.for_model(family, loaded.tokenizer, settings.reasoning.prompted_thinking)
    return ServedModel(engine=engine, renderer=renderer, fingerprint=fingerprint, images=images,
                       reasoning=reasoning)
