"""Bar chart of epoch time over the GEMM floor, from the JSON of ``mlp_epoch.py``.

python benchmarks/plot.py results.json ratios.png
"""

from __future__ import annotations

import json
import sys


def plot_ratios(report: dict, path: str) -> None:
    """One group of bars per configuration; a bar's height is median epoch / gemm-floor median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = report["configs"]
    names = list(dict.fromkeys(r["name"] for c in configs for r in c["results"]))
    width = 0.8 / max(1, len(configs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4.0), layout="constrained")
    for k, entry in enumerate(configs):
        ratio = {r["name"]: r.get("ratio") for r in entry["results"]}
        xs = [i + (k - (len(configs) - 1) / 2) * width for i, n in enumerate(names) if ratio.get(n)]
        heights = [ratio[n] for n in names if ratio.get(n)]
        cfg = entry["config"]
        label = f"{cfg['name']}: {'-'.join(map(str, cfg['sizes']))}, batch {cfg['batch_size']}"
        bars = ax.bar(xs, heights, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    tallest = max((r.get("ratio") or 0 for c in configs for r in c["results"]), default=0)
    if tallest > 30:  # one outlier would flatten the rest
        ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("median epoch / GEMM floor")
    ax.set_title(f"One training epoch on {report['machine']['cpu']} (lower is better)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python benchmarks/plot.py RESULTS.json OUT.png")
    with open(sys.argv[1]) as f:
        plot_ratios(json.load(f), sys.argv[2])
