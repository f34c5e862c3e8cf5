"""Figures drawn off-screen, each on its own Agg canvas. Never through pyplot: pyplot's
global backend and figure list belong to the user's session (a Jupyter notebook calling
`petloc.sweep()` keeps its inline backend), and a Figure no pyplot holds needs no closing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    """An empty figure of `figsize` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path, tight: bool = True) -> Path:
    """`fig` written at `path` at the pictures' 80 dpi (laid out tightly unless `tight` is False)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path
