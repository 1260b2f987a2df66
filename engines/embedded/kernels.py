"""The weight format and matmul path of the embedded engine's Linear layers, picked for the CPU at hand.

CPUs differ in what is fast: on AVX2 alone bf16 is emulated (6x slower than int8), AVX-512 BF16 and VNNI
narrow the gap, AMX changes it again, and torch's int8 matmuls have three libraries (fbgemm, oneDNN, and
"x86", which picks between them per shape). So with `--quantize auto` the loader times each candidate on
the model's own MLP shape, at one row (a decode step) and at 64 rows (a prefill chunk), and keeps the
fastest at decode: decode is most of a chat's time. Candidates within 5% of it are timed at prefill too,
and the faster there wins. A named format (`int8`, `bf16`, `none`) skips the formats it does not name;
`int8` still picks its library by timing. The measurement takes about half a second for the default
model; it runs single-threaded, as loading does (see use_one_torch_thread), which ranks the
candidates as the scheduler's threads would.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

_INT8_LIBRARIES = ("fbgemm", "x86", "onednn")  # torch's quantized engines for x86 (qnnpack is ARM's)
DEFAULT_LIBRARY = torch.backends.quantized.engine
_PREFILL_ROWS = 64
_TIE = 1.05  # timings this close are equal: the machine is noisy
_WARM_UP, _REPEATS = 3, 7  # a library's first calls set it up (12 ms for fbgemm's first): not timed


@dataclass(frozen=True, slots=True)
class KernelChoice:
    weights: str  # "int8", "bf16" or "fp32"
    library: str | None  # torch's quantized engine, for int8
    chosen_by: str  # "measured" or "setting"
    cpu: tuple[str, ...] = ()  # the CPU flags that matter here
    decode_ms: dict[str, float] = field(default_factory=dict)  # candidate -> ms per MLP matmul at 1 row
    prefill_ms: dict[str, float] = field(default_factory=dict)  # ... at 64 rows (the decode ties only)

    @property
    def name(self) -> str:
        return f"{self.weights}-{self.library}" if self.library else self.weights

    def describe(self) -> dict[str, Any]:
        """As /ready shows it."""
        return {"weights": self.weights, "library": self.library, "chosen_by": self.chosen_by,
                "cpu_flags": list(self.cpu), "decode_ms": self.decode_ms, "prefill_ms": self.prefill_ms}


class Bf16Linear(torch.nn.Module):
    """A Linear layer whose weights are kept in bf16; inputs and outputs stay fp32 (the rest of the model,
    the KV cache and the logits do not change)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(torch.bfloat16),
                                                                 requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def cpu_flags() -> tuple[str, ...]:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return tuple(sorted(f for f in line.split(":", 1)[1].split()
                                        if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                                 "amx_int8", "amx_tile")))
    except OSError:
        pass
    return ()


def candidates(setting: str) -> list[str]:
    int8 = [f"int8-{lib}" for lib in _INT8_LIBRARIES if lib in torch.backends.quantized.supported_engines]
    return {"auto": [*int8, "bf16", "fp32"], "int8": int8, "bf16": ["bf16"], "none": ["fp32"]}[setting]


def choose(setting: str, mlp_shape: tuple[int, int]) -> KernelChoice:
    """The candidates of `setting`, timed on an (out, in) matrix of the model's MLP when there is a choice."""
    names = candidates(setting)
    if not names:
        raise ValueError(f"this torch has no int8 matmul library for x86 (it has "
                         f"{torch.backends.quantized.supported_engines})")
    if len(names) == 1:
        return named_choice(names[0], "setting")
    weight = torch.randn(mlp_shape) * mlp_shape[1] ** -0.5
    layers = {name: _convert(torch.nn.Sequential(_linear(weight)), name) for name in names}
    decode = {name: _time(layer, 1, mlp_shape[1]) for name, layer in layers.items()}
    close = [n for n in names if decode[n] <= min(decode.values()) * _TIE]
    prefill = {name: _time(layers[name], _PREFILL_ROWS, mlp_shape[1]) for name in close} if len(close) > 1 else {}
    # Ties (within 5%) go to the earlier candidate, so that equal libraries do not alternate between starts.
    best = next(n for n in close if not prefill or prefill[n] <= min(prefill.values()) * _TIE)
    torch.backends.quantized.engine = DEFAULT_LIBRARY
    return named_choice(best, "measured", {n: round(v, 4) for n, v in decode.items()},
                        {n: round(v, 4) for n, v in prefill.items()})


def apply(model: torch.nn.Module, choice: KernelChoice) -> torch.nn.Module:
    """The model with its Linear layers in the chosen format (the int8 library becomes torch's engine)."""
    return _convert(model, choice.name)


def named_choice(name: str, chosen_by: str, decode: dict[str, float] | None = None,
                 prefill: dict[str, float] | None = None) -> KernelChoice:
    weights, _, library = name.partition("-")
    return KernelChoice(weights, library or None, chosen_by, cpu_flags(), decode or {}, prefill or {})


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    return layer.eval().requires_grad_(False)


def _convert(model: torch.nn.Module, name: str) -> torch.nn.Module:
    if name == "fp32":
        return model
    if name == "bf16":
        for parent in list(model.modules()):
            for child_name, child in parent.named_children():
                if type(child) is torch.nn.Linear:
                    setattr(parent, child_name, Bf16Linear(child))
        return model
    # Per-channel weight scales: per-tensor ones wreck small models (SmolLM2 emits gibberish).
    from torch.ao.quantization import per_channel_dynamic_qconfig

    torch.backends.quantized.engine = name.removeprefix("int8-")  # packs the weights for this library
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                                  dtype=torch.qint8)


def _time(layer: torch.nn.Module, rows: int, width: int) -> float:
    return median_ms(layer, torch.randn(rows, width), _REPEATS)


def median_ms(layer: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of `layer(x)` over `repeats` calls, after _WARM_UP untimed ones."""
    times = []
    with torch.inference_mode():
        for _ in range(_WARM_UP):
            layer(x)
        for _ in range(repeats):
            start = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def use_one_torch_thread() -> None:
    """Make the calling thread, and threads that first use torch after this call, compute single-threaded.

    Only the scheduler thread should run torch ops in parallel. Every thread that does gets its own OpenMP
    pool, and once the pools hold more threads than there are cores, libgomp stops spinning between
    parallel regions: each of the ~1,000 ops of a decode step then waits for a sleeping worker to wake.
    Measured on 2 cores: decode 30% slower, the process at 1.3 busy cores instead of 2. Call this before
    loading the model (loading would otherwise create a pool that lives on in its thread).
    """
    torch.set_num_threads(1)
