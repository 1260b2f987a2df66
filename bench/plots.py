"""PNG plots of a comparison run (matplotlib, the `bench` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = {name: r for name, r in results["servers"].items() if "error" not in r}
    written = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in servers.items():
        ttft = r.get("single_stream", {}).get("ttft_s") or {}
        if ttft:
            sizes = sorted(ttft, key=int)
            ax.plot([int(s) for s in sizes], [ttft[s] for s in sizes], marker="o", label=name)
    ax.set(xlabel="prompt tokens (approx.)", ylabel="time to first token (s)", title="Workload 1: time to first token")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save(fig, "ttft-by-prompt.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in servers.items():
        levels = r.get("concurrency") or {}
        if levels and "error" not in levels:
            keys = sorted(levels, key=int)
            ax.plot([int(k) for k in keys], [levels[k]["aggregate_tokens_per_s"] for k in keys], marker="o", label=name)
    ax.set(xlabel="concurrent streams", ylabel="aggregate tokens/s", title="Workload 2: concurrency")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save(fig, "concurrency.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in servers.items():
        turns = (r.get("multi_turn") or {}).get("ttft_by_turn_s")
        if turns:
            ax.plot(range(1, len(turns) + 1), turns, marker="o", label=name)
    ax.set(xlabel="turn", ylabel="median time to first token (s)", title="Workload 3: multi-turn conversations")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save(fig, "multi-turn.png")
    return written
