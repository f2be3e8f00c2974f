"""Matplotlib helpers for recipe figures (Agg backend: no display needed, safe in tests and on servers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen before pyplot is imported)


def figure(ncols: int = 1, width: float = 5.0, height: float = 3.8) -> tuple[Any, list[Any]]:
    """A figure with ``ncols`` side-by-side axes (always returned as a list)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def _finish(ax: Any, title: str, xlabel: str, ylabel: str, logy: bool) -> None:
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def curves(ax: Any, series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
           xlabel: str = "step", ylabel: str = "loss", logy: bool = False) -> None:
    """One line per ``label -> (x, y)``."""
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label)
    _finish(ax, title, xlabel, ylabel, logy)


def bars(ax: Any, labels: Sequence[str], values: Sequence[float], *, title: str = "", ylabel: str = "",
         logy: bool = False, annotate: str = "{:.3g}") -> None:
    """A labelled bar chart with each bar's value written on top."""
    positions = range(len(labels))
    rects = ax.bar(positions, list(values), color=plt.rcParams["axes.prop_cycle"].by_key()["color"][: len(labels)])
    ax.set_xticks(list(positions))
    ax.set_xticklabels(list(labels), rotation=20, ha="right", fontsize=8)
    for rect, value in zip(rects, values, strict=True):
        ax.annotate(annotate.format(value), (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center", va="bottom", fontsize=7)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)


def save(fig: Any, path: str, suptitle: str = "") -> None:
    """Write ``fig`` to ``path`` as PNG and free it."""
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bands(ax: Any, series: dict[str, tuple[Sequence[float], Sequence[Sequence[float]]]], *, title: str = "",
          xlabel: str = "step", ylabel: str = "loss", logy: bool = False) -> None:
    """One line per ``label -> (x, runs)``: the mean over runs (seeds), shaded between their min and max."""
    for label, (xs, runs) in series.items():
        rows = [list(r) for r in runs if len(r) == len(xs)]
        if not rows:
            continue
        mean = [sum(col) / len(col) for col in zip(*rows, strict=True)]
        lo = [min(col) for col in zip(*rows, strict=True)]
        hi = [max(col) for col in zip(*rows, strict=True)]
        (line,) = ax.plot(list(xs), mean, label=f"{label} (n={len(rows)})")
        ax.fill_between(list(xs), lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    _finish(ax, title, xlabel, ylabel, logy)
