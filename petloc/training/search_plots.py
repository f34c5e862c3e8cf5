"""The pictures of a search, from its finished trials as plain rows: parallel coordinates of
the searched hyperparameters against the objective (interactive HTML and PNG), which
hyperparameters mattered (scikit-learn), and the best objective so far. Free of MLflow: the
tracking layer logs what these draw."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from petloc.training.figures import new_figure, save_figure

MIN_TRIALS_FOR_IMPORTANCE = 3  # fewer points than that and a forest has nothing to split
TRIALS_FOR_A_SOLID_IMPORTANCE = 30  # below this, the importance is said to be indicative
FOREST_TREES, SHUFFLES = 200, 20


@dataclass
class Axis:
    """One hyperparameter as an axis: each trial's position on it, and its labelled ticks."""

    name: str
    positions: list[float]
    ticks: list[float]
    labels: list[str]


def axis(name: str, values: Sequence) -> Axis:
    """Numbers stay numbers (on a log scale when they span a factor of 10 or more, as learning
    rates do); text (and a mix) becomes categories in sorted order."""
    if all(_is_number(v) for v in values):
        numbers = [float(v) for v in values]
        log = min(numbers) > 0 and max(numbers) >= 10 * min(numbers)
        scale = math.log10 if log else float
        distinct = sorted(set(numbers))
        shown = distinct if len(distinct) <= 8 else [distinct[0], distinct[-1]]
        return Axis(
            f"{name} (log)" if log else name,
            [scale(v) for v in numbers],
            [scale(v) for v in shown],
            [f"{v:.4g}" for v in shown],
        )
    categories = sorted({str(v) for v in values})
    return Axis(
        name,
        [float(categories.index(str(v))) for v in values],
        [float(i) for i in range(len(categories))],
        categories,
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parallel_coordinates_html(
    trials: list[dict],
    names: Sequence[str],
    objective: str,
    label: str,
    path: Path,
    lower_is_better: bool = False,
) -> Path:
    """An interactive Plotly page, its JavaScript inlined: it opens offline, and inside the
    MLflow UI's artifact view. Drag along an axis to keep only the trials in that range."""
    import plotly.graph_objects as go

    scores = [float(t[objective]) for t in trials]
    axes = [axis(name, [t[name] for t in trials]) for name in names]
    dimensions = [
        {"label": a.name, "values": a.positions, "tickvals": a.ticks, "ticktext": a.labels}
        for a in axes
    ]
    dimensions.append({"label": label, "values": scores})
    figure = go.Figure(
        go.Parcoords(
            line={
                "color": scores,
                "colorscale": "Viridis" + _reversed(lower_is_better),
                "showscale": True,
            },
            dimensions=dimensions,
        )
    )
    figure.update_layout(title=_title(label, len(trials)), font={"size": 13})
    figure.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def _title(label: str, count: int) -> str:
    return f"Searched hyperparameters against {label} ({count} finished trials)"


def _reversed(lower_is_better: bool) -> str:
    """The suffix that reverses a colour map (Plotly's and matplotlib's) when lower is better:
    the best trial is the brightest either way."""
    return "_r" if lower_is_better else ""


def parallel_coordinates_png(
    trials: list[dict],
    names: Sequence[str],
    objective: str,
    label: str,
    path: Path,
    lower_is_better: bool = False,
) -> Path:
    """The same picture drawn by matplotlib: a line per trial, coloured by the objective, the
    best drawn last (on top)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    colormap = "viridis" + _reversed(lower_is_better)
    ordered = sorted(trials, key=lambda t: float(t[objective]), reverse=lower_is_better)
    scores = [float(t[objective]) for t in ordered]
    axes = [axis(name, [t[name] for t in ordered]) for name in names]
    axes.append(axis(label, scores))
    fig = new_figure((max(6.0, 1.8 * len(axes)), 4.5))
    ax = fig.subplots()
    low, high = min(scores), max(scores)
    colours = colormaps[colormap]
    for i, _ in enumerate(ordered):
        ax.plot(
            range(len(axes)),
            [_unit(a, a.positions[i]) for a in axes],
            color=colours((scores[i] - low) / (high - low) if high > low else 1.0),
            alpha=0.8,
        )
    for x, a in enumerate(axes):
        ax.axvline(x, color="black", linewidth=0.8)
        for tick, text in zip(a.ticks, a.labels, strict=True):
            ax.annotate(text, (x, _unit(a, tick)), xytext=(3, 0), textcoords="offset points")
    ax.set_xticks(range(len(axes)), [a.name for a in axes])
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    ax.set_title(_title(label, len(trials)))
    mappable = ScalarMappable(cmap=colormap, norm=Normalize(low, high))
    fig.colorbar(mappable, ax=ax, label=label)
    return save_figure(fig, path)


def _unit(a: Axis, position: float) -> float:
    """A position on axis `a`, scaled to 0..1 (the middle when all trials share one value)."""
    low, high = min(a.ticks + a.positions), max(a.ticks + a.positions)
    return (position - low) / (high - low) if high > low else 0.5


def importance(trials: list[dict], names: Sequence[str], objective: str, label: str) -> dict | None:
    """Which hyperparameters moved the objective: the permutation importance of a random
    forest fitted to the finished trials (text values one-hot encoded), each hyperparameter
    shuffled whole. None with fewer than MIN_TRIALS_FOR_IMPORTANCE trials or nothing varied."""
    if len(trials) < MIN_TRIALS_FOR_IMPORTANCE or not names:
        return None
    import pandas
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    values = pandas.DataFrame(
        {n: [t[n] if _all_numbers(trials, n) else str(t[n]) for t in trials] for n in names}
    )
    text = [n for n in names if not _all_numbers(trials, n)]
    model = make_pipeline(
        ColumnTransformer(
            [("text", OneHotEncoder(handle_unknown="ignore"), text)], remainder="passthrough"
        ),
        RandomForestRegressor(n_estimators=FOREST_TREES, random_state=0),
    )
    scores = [float(t[objective]) for t in trials]
    model.fit(values, scores)
    found = permutation_importance(model, values, scores, n_repeats=SHUFFLES, random_state=0)
    caveat = (
        f"; in-sample over only {len(trials)} trials: indicative"
        if len(trials) < TRIALS_FOR_A_SOLID_IMPORTANCE
        else "; in-sample"
    )
    ranked = sorted(
        zip(names, found.importances_mean, found.importances_std, strict=True),
        key=lambda item: -item[1],
    )
    return {
        "method": (
            f"scikit-learn permutation importance (mean drop in R² over {SHUFFLES} shuffles) of a "
            f"random forest ({FOREST_TREES} trees) fitted to {label}, text values one-hot "
            f"encoded{caveat}"
        ),
        "objective": label,
        "trials": len(trials),
        "importance": [
            {"hyperparameter": n, "importance": float(mean), "std": float(std)}
            for n, mean, std in ranked
        ],
    }


def _all_numbers(trials: list[dict], name: str) -> bool:
    return all(_is_number(t[name]) for t in trials)


def plot_importance(found: dict, path: Path) -> Path:
    """The importances as horizontal bars (most important on top), the method in the title."""
    ranked = list(reversed(found["importance"]))
    fig = new_figure((8, 1.5 + 0.45 * len(ranked)))
    ax = fig.subplots()
    ax.barh(
        [r["hyperparameter"] for r in ranked],
        [r["importance"] for r in ranked],
        xerr=[r["std"] for r in ranked],
        color="tab:blue",
    )
    ax.set_xlabel(f"drop in R² of {found['objective']} when shuffled")
    ax.set_title(_wrapped(f"Hyperparameter importance: {found['method']}"), fontsize=9)
    return save_figure(fig, path)


def _wrapped(text: str, width: int = 90) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def plot_best_so_far(
    points: list[dict], label: str, path: Path, lower_is_better: bool = False
) -> Path:
    """The best objective so far (the lowest when `lower_is_better`) against the trial number
    and against the time since the sweep started; `points` are the trials in the order they
    started, each with `objective` and `minutes` (when it ended)."""
    best = partial(_running_best, lower_is_better=lower_is_better)
    fig = new_figure((10, 4))
    by_trial, by_time = fig.subplots(1, 2, sharey=True)
    numbers = list(range(1, len(points) + 1))
    by_trial.plot(numbers, [p["objective"] for p in points], "o", color="tab:gray", label="trial")
    by_trial.step(
        numbers, best([p["objective"] for p in points]), where="post", label="best so far"
    )
    by_trial.set(xlabel="trial (in the order started)", ylabel=label, title="against trials")
    by_trial.legend()
    timed = sorted(points, key=lambda p: p["minutes"])
    minutes = [p["minutes"] for p in timed]
    by_time.plot(minutes, [p["objective"] for p in timed], "o", color="tab:gray")
    by_time.step(minutes, best([p["objective"] for p in timed]), where="post")
    by_time.set(xlabel="minutes since the sweep started", title="against time")
    fig.suptitle(f"Best {label} so far")
    return save_figure(fig, path)


def _running_best(values: list[float], lower_is_better: bool) -> list[float]:
    """The running maximum of `values` (minimum when `lower_is_better`)."""
    better, best = (min, math.inf) if lower_is_better else (max, -math.inf)
    out = []
    for v in values:
        best = better(best, v)
        out.append(best)
    return out
