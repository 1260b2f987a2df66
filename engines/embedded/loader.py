"""Find, verify, convert and load model weights for the embedded engine.

A GGUF file is dequantized by transformers once (slow: ~45 s and ~4 GB for the 0.5B default), saved as a
safetensors folder under the data dir, and loaded from there afterwards (~2 s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.embedded.catalog import CatalogModel, find_catalog_model

if TYPE_CHECKING:
    from engines.embedded.kernels import KernelChoice

log = logging.getLogger("lodestar.loader")

_CHUNK = 8 << 20
VISION_MODEL_TYPES = frozenset({"qwen2_5_vl"})
_DONE_MARKER = "lodestar-converted"


@dataclass(slots=True)
class LoadedModel:
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # a transformers tokenizer
    model_id: str
    aliases: tuple[str, ...]
    folder: Path | None = None  # where the weights were loaded from (the image processor's config lives there)
    kernels: KernelChoice | None = None  # the Linear layers' weight format and matmul library

    @property
    def vision(self) -> bool:
        return self.model.config.model_type in VISION_MODEL_TYPES


class ModelNotAvailable(Exception):
    pass


def _hash_and_assemble(parts: list[Path], target: Path | None) -> str:
    digest = hashlib.sha256()
    out = open(target, "wb") if target is not None else None
    try:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    if out is not None:
                        out.write(chunk)
    finally:
        if out is not None:
            out.close()
    return digest.hexdigest()


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF file into a safetensors folder at `target` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s once into %s (this takes a while the first time)", gguf_path.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        setattr(model, "hf_quantizer", None)  # noqa: B010 - nn.Module's typed __setattr__ takes no None
        model.config.quantization_config = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _tie_output_head(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(gguf_path.name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tie_output_head(model: Any) -> None:
    """GGUF files store the output head apart from the embeddings even when the model ties them.

    When the two dequantized matrices agree (they differ only by quantization error), keep one copy: the
    output head, which GGUF quantizers keep at the higher precision.
    """
    import torch

    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is None or head.weight is embed or head.weight.shape != embed.shape:
        return
    rel = (head.weight - embed).norm() / embed.norm()
    if rel.item() > 0.05:  # genuinely different matrices: keep both
        return
    with torch.no_grad():
        embed.copy_(head.weight)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    log.info("tied the output head to the embeddings (relative difference %.4f)", rel.item())


def _converted_dir(data_dir: Path, sha256: str) -> Path:
    return data_dir / "models" / sha256[:24]


def _prepare_catalog_model(entry: CatalogModel, data_dir: Path) -> Path:
    folder = _converted_dir(data_dir, entry.gguf_sha256)
    if (folder / _DONE_MARKER).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    parts = entry.part_paths()
    if len(parts) == 1:
        gguf_path, staged = parts[0], None
        digest = _hash_and_assemble(parts, None)
    else:
        staged_dir = Path(tempfile.mkdtemp(prefix=".gguf-", dir=folder.parent))
        gguf_path = staged = staged_dir / entry.gguf_name
        digest = _hash_and_assemble(parts, gguf_path)
    try:
        if digest != entry.gguf_sha256:
            raise ModelNotAvailable(
                f"model {entry.id!r}: the GGUF's sha256 is {digest}, expected {entry.gguf_sha256}; "
                "refusing to load it")
        _convert_gguf(gguf_path, folder)
    finally:
        if staged is not None:
            shutil.rmtree(staged.parent, ignore_errors=True)
    return folder


def _prepare_gguf_file(path: Path, data_dir: Path) -> Path:
    digest = _hash_and_assemble([path], None)
    folder = _converted_dir(data_dir, digest)
    if not (folder / _DONE_MARKER).exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(path, folder)
    return folder


def resolve_model_folder(name: str, data_dir: Path) -> tuple[Path, str, tuple[str, ...]]:
    """Turn a catalog id/alias, a GGUF file or a Hugging Face folder into a loadable folder."""
    entry = find_catalog_model(name)
    if entry is not None:
        return _prepare_catalog_model(entry, data_dir), entry.id, entry.aliases
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _prepare_gguf_file(path, data_dir), path.stem.lower(), ()
    if path.is_dir() and (path / "config.json").exists():
        return path, path.name.lower(), ()
    raise ModelNotAvailable(
        f"unknown model {name!r}: give a catalog id, a .gguf file or a Hugging Face model folder")


def folder_chat_template(folder: Path) -> str | None:
    """A template shipped beside the tokenizer (vision models often keep it in the processor's files)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    processor_json = folder / "chat_template.json"
    if processor_json.is_file():
        return json.loads(processor_json.read_text()).get("chat_template")
    return None


def load_model(name: str, data_dir: Path, *, quantize: str = "auto") -> LoadedModel:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from engines.embedded import kernels

    if quantize not in ("auto", "int8", "bf16", "none"):
        raise ValueError(f"unknown quantization {quantize!r} (use auto, int8, bf16 or none)")
    folder, model_id, aliases = resolve_model_folder(name, data_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = folder_chat_template(folder)
    vision = AutoConfig.from_pretrained(folder).model_type in VISION_MODEL_TYPES
    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = auto.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    config = getattr(model.config, "text_config", None) or model.config
    choice = kernels.choose(quantize, (config.intermediate_size, config.hidden_size))
    log.info("kernels: %s (%s; CPU flags %s; ms per MLP matmul at 1 row %s, at 64 rows %s)", choice.name,
             choice.chosen_by, " ".join(choice.cpu) or "unknown", choice.decode_ms or "-", choice.prefill_ms or "-")
    converted: Any = kernels.apply(model, choice)
    return LoadedModel(model=converted, tokenizer=tokenizer, model_id=model_id, aliases=aliases, folder=folder,
                       kernels=choice)
