"""The matmul paths the embedded engine could run a Linear layer on, timed on this CPU.

    .venv/bin/python -m bench.kernels [--repeat 30]

For the default model's Linear shapes (Qwen2.5-0.5B: hidden 896, MLP 4864, the 151,936-token head), at the
row counts of decode (1 and 8 sequences) and of prefill (128 and 675 prompt tokens): fp32, bf16 (oneDNN;
AVX-512 BF16 or AMX where the CPU has them), and int8 dynamic quantization with per-channel weight scales
on each of torch's quantized engines. Prints milliseconds per matmul (the median of --repeat) and the
CPU's model and flags; results go into docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from engines.embedded.kernels import median_ms

# (out_features, in_features) of the default model's Linear layers, with how many of each one token meets.
SHAPES = {"qkv+o (896x896 + 2x128x896 + 896x896)": [(896, 896), (128, 896), (128, 896), (896, 896)],
          "mlp (2x4864x896 + 896x4864)": [(4864, 896), (4864, 896), (896, 4864)]}
ROWS = (1, 8, 128, 675)


def cpu() -> dict[str, Any]:
    model, flags = "", []
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma"))]
    return {"model": model, "flags": flags, "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def candidates(out_f: int, in_f: int) -> dict[str, Any]:
    from torch.ao.quantization import per_channel_dynamic_qconfig

    torch.manual_seed(0)
    base = torch.nn.Linear(in_f, out_f, bias=True).eval().requires_grad_(False)
    paths: dict[str, Any] = {"fp32": (base, torch.float32),
                             "bf16": (torch.nn.Linear(in_f, out_f).eval().requires_grad_(False).to(torch.bfloat16),
                                      torch.bfloat16)}
    for engine in torch.backends.quantized.supported_engines:
        if engine == "qnnpack":  # ARM's; far slower on x86
            continue
        torch.backends.quantized.engine = engine
        wrapper = torch.nn.Sequential(torch.nn.Linear(in_f, out_f)).eval()
        quantized = torch.ao.quantization.quantize_dynamic(
            wrapper, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        paths[f"int8 ({engine})"] = (quantized, torch.float32, engine)
    return paths


def time_path(path: tuple, rows: int, in_f: int, repeat: int) -> float:
    module, dtype = path[0], path[1]
    if len(path) > 2:
        torch.backends.quantized.engine = path[2]
    return median_ms(module, torch.randn(rows, in_f, dtype=dtype), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    print(json.dumps(cpu()))
    for group, shapes in SHAPES.items():
        built = [(in_f, candidates(out_f, in_f)) for out_f, in_f in shapes]
        for name in built[0][1]:
            per_rows = {rows: sum(time_path(paths[name], rows, in_f, args.repeat) for in_f, paths in built)
                        for rows in ROWS}
            print(f"{group:40s} {name:14s} " + "  ".join(f"{rows:4d} rows {ms:8.3f} ms"
                                                         for rows, ms in per_rows.items()), flush=True)


if __name__ == "__main__":
    main()
