"""MkDocs hook: files outside docs/ that the pages link to become part of the site.

A page links to a project file as it sits in the repository (`../benchmarks/RESULTS.md`,
`../examples/sweep_and_predict.py`), so the link works when the Markdown is read in the
repository too. MkDocs only knows files under docs/, and --strict fails on such a link; this
hook adds each linked file that exists, under `repo/` in the site (Markdown rendered as a
page, anything else copied). A link to a file that does not exist is left alone, so strict
mode still fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

OUTSIDE_LINK = re.compile(r"\]\((\.\./[^)#\s]+)")


def on_files(files: Files, config) -> Files:
    docs = Path(config.docs_dir)
    root = docs.parent.resolve()
    linked: set[str] = set()
    for page in docs.rglob("*.md"):
        for target in OUTSIDE_LINK.findall(page.read_text(encoding="utf-8")):
            resolved = (page.parent / target).resolve()
            if resolved.is_file() and resolved.is_relative_to(root):
                linked.add(resolved.relative_to(root).as_posix())
    for relative in sorted(linked):
        # src_uri as a page in docs/ sees it, so MkDocs finds the link's target by it
        file = File(
            f"../{relative}",
            src_dir=str(docs),
            dest_dir=config.site_dir,
            use_directory_urls=config.use_directory_urls,
            inclusion=InclusionLevel.NOT_IN_NAV,
        )
        stem, suffix = relative.rsplit(".", 1) if "." in relative else (relative, "")
        is_page = suffix == "md"
        file.dest_uri = f"repo/{stem}/index.html" if is_page else f"repo/{relative}"
        files.append(file)
    return files
