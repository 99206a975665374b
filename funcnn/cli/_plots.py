"""The command line's figures: training curves and a confusion matrix, as PNG files.

matplotlib is optional (the ``examples`` extra): it is imported only when a figure
is drawn, and its absence raises ``ImportError`` for the caller to report. Figures
are drawn on a bare ``matplotlib.figure.Figure`` (no pyplot, no global state) and
written atomically.
"""

from __future__ import annotations

import io
import os

import numpy as np

from funcnn._files import write_bytes

__all__ = ["confusion_figure", "curves_figure"]

_TRAIN = "train: running mean over the epoch"
_VAL = "validation: after the epoch"


def _save(fig, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_bytes(path, buffer.getvalue())


def _test_label(test: dict, kept: str) -> str:
    label = f"test set, {kept}: loss {test['loss']:.4f}"
    if test.get("accuracy") is not None:
        label += f", accuracy {100 * test['accuracy']:.2f}%"
    return label


def _log_subs(ax) -> tuple[float, ...]:
    """Where a log axis gets labelled ticks: 1, 2, 5 per decade, more on a short axis."""
    low, high = ax.dataLim.intervaly
    if low > 0 and high / low < 20:
        return (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    return (1.0, 2.0, 5.0)


def _marker_size(n_points: int) -> float | None:
    """Dots on the lines: large when there are few points (one epoch is a lone dot, which
    must show), small up to 30 points, none beyond (the line says it all)."""
    if n_points > 30:
        return None
    return 7.0 if n_points <= 5 else 3.0


def curves_figure(history: dict, path: str | os.PathLike, *, title: str,
                  test: dict | None = None, dropout: bool = True):
    """Loss and accuracy per epoch (train and validation) side by side, written to ``path``.

    ``history`` is the one ``funcnn.fit`` returns; ``test`` (``{"loss", "accuracy"}``)
    adds the final test values as stars at the epoch whose params were kept; ``dropout``
    says whether the net drops units (the legend then says the train curve has it on).
    The epoch axis has integer ticks only. Returns the matplotlib ``Figure`` (written).
    """
    from matplotlib.figure import Figure  # optional dependency, imported when drawing
    from matplotlib.ticker import (
        FuncFormatter,
        LogLocator,
        MaxNLocator,
        NullFormatter,
        PercentFormatter,
    )

    epochs = np.arange(1, len(history["train_loss"]) + 1)
    has_val = bool(history.get("val_loss"))
    has_acc = bool(history["train_accuracy"]) and history["train_accuracy"][0] is not None
    panels = [("loss", 1.0)] + ([("accuracy", 100.0)] if has_acc else [])
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    ms = _marker_size(len(epochs))
    marker = None if ms is None else "o"
    best = history.get("best_epoch")
    for ax, (key, scale) in zip(axes, panels, strict=True):
        ax.plot(epochs, np.asarray(history[f"train_{key}"]) * scale, marker=marker, ms=ms,
                label=_TRAIN + (", dropout on" if dropout else ""))
        if has_val:
            ax.plot(epochs, np.asarray(history[f"val_{key}"]) * scale, marker=marker, ms=ms,
                    label=_VAL + (", dropout off" if dropout else ""))
        if test is not None and test.get(key) is not None:
            kept = len(epochs) if best is None else best[0] + 1
            ax.plot([kept], [test[key] * scale], "k*", ms=11, label=_test_label(
                test, "after the last epoch" if best is None else "with the params kept"))
        if best is not None:
            ax.axvline(best[0] + 1, color="grey", ls="--", lw=1,
                       label="best validation loss: the params kept")
        ax.set_xlabel("epoch")
        # min_n_ticks=1: with one or two epochs, MaxNLocator would otherwise give up its
        # integer constraint and tick at 0.5, 0.6, ... around the lone epoch
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10],
                                               min_n_ticks=1))
        ax.set_xlim(0.5, len(epochs) + 0.5)
        ax.grid(alpha=0.3, which="both")
        if key == "loss":
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=_log_subs(ax)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set(ylabel="cross-entropy (log scale)", title="loss")
        else:
            ax.yaxis.set_major_formatter(PercentFormatter(decimals=1))
            ax.set(ylabel="accuracy", title="accuracy")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=2, fontsize=9, frameon=False)
    fig.suptitle(title)
    _save(fig, path)
    return fig


def confusion_figure(counts: np.ndarray, path: str | os.PathLike, *, title: str) -> None:
    """A confusion matrix: counts written in the cells, colour = share of the true class.

    ``counts[i, j]`` is the number of examples of true class ``i`` predicted as ``j``.
    The colour of a cell is its count over its row's total, on a power scale (``**0.3``)
    so that the fraction of a percent of a class that goes wrong shows beside the diagonal.
    """
    from matplotlib.colors import PowerNorm  # optional dependency, imported when drawing
    from matplotlib.figure import Figure

    counts = np.asarray(counts)
    k = counts.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    share = counts / np.maximum(totals, 1)
    fig = Figure(figsize=(7.2, 6.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.3, vmin=0.0, vmax=1.0))
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.3 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    bar = fig.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label("colour: share of the true class's images (its row)")
    bar.set_ticks([0, 0.001, 0.01, 0.05, 0.2, 0.5, 1.0])
    bar.set_ticklabels(["0", "0.1%", "1%", "5%", "20%", "50%", "100%"])
    ax.set_title(title, fontsize=11, pad=12)
    _save(fig, path)
