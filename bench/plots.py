"""PNG plots of a comparison run (matplotlib, the `bench` extra)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# (file, title, x label, y label, server result -> (xs, ys) or None)
Series = Callable[[dict[str, Any]], tuple[list[float], list[float]] | None]


def _ttft(r: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    ttft = (r.get("single_stream") or {}).get("ttft_s") or {}
    sizes = sorted(ttft, key=int)
    return ([int(s) for s in sizes], [ttft[s] for s in sizes]) if sizes else None


def _concurrency(r: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    levels = r.get("concurrency") or {}
    if not levels or "error" in levels:
        return None
    keys = sorted(levels, key=int)
    return [int(k) for k in keys], [levels[k]["aggregate_tokens_per_s"] for k in keys]


def _turns(r: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    turns = (r.get("multi_turn") or {}).get("ttft_by_turn_s")
    return (list(range(1, len(turns) + 1)), turns) if turns else None


PLOTS: tuple[tuple[str, str, str, str, Series], ...] = (
    ("ttft-by-prompt.png", "Workload 1: time to first token", "prompt tokens (approx.)",
     "time to first token (s)", _ttft),
    ("concurrency.png", "Workload 2: concurrency", "concurrent streams", "aggregate tokens/s", _concurrency),
    ("multi-turn.png", "Workload 3: multi-turn conversations", "turn", "median time to first token (s)", _turns),
)


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = {name: r for name, r in results["servers"].items() if "error" not in r}
    written = []
    for file, title, xlabel, ylabel, series in PLOTS:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in servers.items():
            points = series(r)
            if points:
                ax.plot(*points, marker="o", label=name)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        written.append(out / file)
    return written
