"""The README is a front door and the docs/ site builds strict: a broken link fails it.

MkDocs runs in this process (as `make docs` runs it, with --strict), on the project's own
mkdocs.yml and on a copy with a broken link put in.
"""

import re
import shutil
from pathlib import Path

import pytest

mkdocs_build = pytest.importorskip(
    "mkdocs.commands.build", reason="the docs extra: pip install -e '.[docs]'"
)
from mkdocs.config import load_config  # noqa: E402
from mkdocs.exceptions import Abort  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 150
# Files outside docs/ that the pages link to (docs/hooks.py adds them to the site).
LINKED_OUTSIDE = ("benchmarks/RESULTS.md", "examples", "experiments")


def build(project: Path, site: Path) -> None:
    config = load_config(config_file=str(project / "mkdocs.yml"), strict=True, site_dir=str(site))
    mkdocs_build.build(config)


def test_the_readme_is_short_and_its_links_lead_somewhere():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    targets = re.findall(r"\]\(([^)#\s]+)\)", text)
    assert "docs/images/gallery.png" in targets and "docs/data.md" in targets
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing


def test_the_site_builds_strict_with_the_files_it_links_outside_docs(tmp_path):
    build(ROOT, tmp_path / "site")
    assert (tmp_path / "site" / "guarantees" / "index.html").is_file()
    # ../benchmarks/RESULTS.md from docs/speed.md: rendered into the site, the link rewritten to it
    assert (tmp_path / "site" / "repo" / "benchmarks" / "RESULTS" / "index.html").is_file()
    speed = (tmp_path / "site" / "speed" / "index.html").read_text()
    assert 'href="../repo/benchmarks/RESULTS/"' in speed


@pytest.mark.parametrize("link", ["../benchmarks/NOPE.md", "nope.md", "data.md#no-such-heading"])
def test_a_broken_link_fails_the_build(tmp_path, link):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", project)
    for name in LINKED_OUTSIDE:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        copy(ROOT / name, project / name)
    build(project, tmp_path / "site-before")  # the copy builds
    with (project / "docs" / "speed.md").open("a") as page:
        page.write(f"\n[a link]({link})\n")
    with pytest.raises(Abort, match="strict mode"):
        build(project, tmp_path / "site")
