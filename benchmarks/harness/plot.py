"""The bar chart of a run: each contender's median epoch over the GEMM floor's."""

from __future__ import annotations

__all__ = ["plot_ratios"]


def _order(configs: list[dict]) -> list[str]:
    """Every contender with a ratio, by its ratio on the first configuration that has one
    (fastest first), so that the bars read as a ranking."""
    names = list(dict.fromkeys(r["name"] for c in configs for r in c["results"]
                               if r.get("ratio")))

    def rank(name):
        for entry in configs:
            ratio = {r["name"]: r.get("ratio") for r in entry["results"]}
            if ratio.get(name):
                return configs.index(entry), ratio[name]
        return len(configs), 0.0

    return sorted(names, key=rank)


def plot_ratios(report: dict, path: str) -> None:
    """One group of bars per contender, one bar per configuration; a bar's height is the
    median epoch over the gemm-floor median of the same configuration. funcnn's contenders
    are labelled in bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in report["configs"] if "results" in c]
    names = _order(configs)
    width = 0.8 / max(1, len(configs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4.0), layout="constrained")
    for k, entry in enumerate(configs):
        ratio = {r["name"]: r.get("ratio") for r in entry["results"]}
        xs = [i + (k - (len(configs) - 1) / 2) * width for i, n in enumerate(names) if ratio.get(n)]
        heights = [ratio[n] for n in names if ratio.get(n)]
        cfg = entry["config"]
        label = (f"{cfg['name']}: {'-'.join(map(str, cfg['sizes']))}, {cfg['activation']}, "
                 f"{cfg['optimizer']}, batch {cfg['batch_size']}")
        bars = ax.bar(xs, heights, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    tallest = max((r.get("ratio") or 0 for c in configs for r in c["results"]), default=0)
    if tallest > 30:  # one outlier would flatten the rest
        ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    for tick, name in zip(ax.get_xticklabels(), names, strict=True):
        if name.startswith("funcnn"):
            tick.set_fontweight("bold")
    ax.set_ylabel("median epoch / GEMM floor")
    m = report["machine"]
    dtypes = "/".join(dict.fromkeys(c["config"]["dtype"] for c in configs))
    ax.set_title(f"One training epoch, {dtypes}, on {m['cpu']} ({m['cores']} cores); "
                 "lower is better")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
