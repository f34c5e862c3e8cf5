"""Where a run and a model version are in MLflow's UI: its hash routes, as links inside a
run's Markdown description (relative, so they work on whatever address serves the UI) and as
full URLs printed at the end of a sweep."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from petloc.tracking import store

# `petloc ui`'s default --host and --port: where the UI is once that command runs.
PETLOC_UI = "http://127.0.0.1:5000"
OPEN_COMMAND = "petloc ui"


def run_route(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def version_route(name: str, version: str) -> str:
    return f"#/models/{quote(name, safe='')}/versions/{version}"


def server_base(uri: str) -> str | None:
    """The UI's address when the tracking store is a server (it serves the UI too), without
    any user or password; None for a local store."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


@dataclass
class SweepLinks:
    """The sweep's pages in the UI, label -> URL. `command`: what serves them first (None
    when a tracking server already does)."""

    urls: dict[str, str] = field(default_factory=dict)
    command: str | None = None

    def lines(self) -> list[str]:
        head = (
            f"open in the MLflow UI once `{self.command}` runs:"
            if self.command
            else "in the MLflow UI:"
        )
        width = max((len(label) for label in self.urls), default=0)
        return [head, *(f"  {label.ljust(width)}  {url}" for label, url in self.urls.items())]


def sweep_links(
    experiment_id: str,
    parent_run_id: str,
    best_run_id: str | None,
    version: tuple[str, str] | None,
    champion: bool,
) -> SweepLinks:
    """The parent run's, the best run's and its registered version's (`version`: name and
    version, when one was registered) URLs; `champion`: whether that version holds the alias."""
    base = server_base(store.tracking_uri())
    routes = {"sweep (parent run)": run_route(experiment_id, parent_run_id)}
    if best_run_id:
        label = "champion's run" if champion else "best run"
        routes[label] = run_route(experiment_id, best_run_id)
    if version:
        routes["model version"] = version_route(*version)
    return SweepLinks(
        {label: f"{base or PETLOC_UI}/{route}" for label, route in routes.items()},
        None if base else OPEN_COMMAND,
    )
