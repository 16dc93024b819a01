"""Plots (matplotlib imported lazily; a bare Figure on the Agg canvas, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

from skebrm._io import write_bytes_atomic
from skebrm.metrics._calibration import ReliabilityCurve


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a figure to ``path`` atomically (rendered in memory, then renamed into place)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=120)
    return write_bytes_atomic(path, buf.getvalue())


def _finish_figure(fig, ax, *, title: str | None, path, legend_size: int = 7):
    """Title, legend, tight layout; write to ``path`` (atomically) if given."""
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    if path is not None:
        _save_figure(fig, path)
    return fig


def plot_percent_lines(
    lines: dict[str, dict[float, float]],
    path: str | os.PathLike | None = None,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    figsize: tuple[float, float] = (6.0, 4.4),
    legend_size: int = 7,
):
    """One line per name through its ``{fraction: value}`` points, fractions shown in %.

    Parameters
    ----------
    lines : dict of str to dict of float to float
        Line name to its ``{fraction: value}`` points.
    path : path-like, optional
        Where to write the figure (atomically); the format follows the suffix.
    xlabel, ylabel : str
        The axis labels.
    title : str, optional
        The axes' title; none by default.
    figsize : tuple of (float, float), default=(6.0, 4.4)
        Width and height of the figure, in inches.
    legend_size : int, default=7
        Font size of the legend.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    for name, points in lines.items():
        xs = sorted(points)
        ax.plot([100 * x for x in xs], [points[x] for x in xs], marker="o", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    return _finish_figure(fig, ax, title=title, path=path, legend_size=legend_size)


def plot_reliability_diagram(
    curves: dict[str, ReliabilityCurve],
    path: str | os.PathLike | None = None,
    *,
    title: str = "Reliability of P(chosen ≻ rejected)",
):
    """Draw reliability curves (one per method) and optionally save them as an image.

    Parameters
    ----------
    curves : dict of str to ReliabilityCurve
        Method name to its curve (see :func:`reliability_curve`).
    path : path-like, optional
        Where to write the figure (atomically); the format follows the suffix.
    title : str, default="Reliability of P(chosen ≻ rejected)"
        The axes' title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.8))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    for name, c in curves.items():
        filled = c.count > 0
        ax.plot(c.mean_predicted[filled], c.fraction_positive[filled], marker="o", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed frequency")
    return _finish_figure(fig, ax, title=title, path=path)


def plot_abstention(
    curves: dict[str, dict[float, float]],
    path: str | os.PathLike | None = None,
    *,
    title: str = "Accuracy when abstaining on the most uncertain pairs",
):
    """Draw accuracy against abstention fraction (one line per method); optionally save.

    Parameters
    ----------
    curves : dict of str to dict of float to float
        Method name to the output of :func:`abstention_accuracy`.
    path : path-like, optional
        Where to write the figure (atomically).
    title : str, default="Accuracy when abstaining on the most uncertain pairs"
        The axes' title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    return plot_percent_lines(
        curves,
        path,
        xlabel="abstained pairs (%)",
        ylabel="accuracy on kept pairs",
        title=title,
    )
