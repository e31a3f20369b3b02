"""The documentation: the README stays short, every page is in the site's navigation, and every code
block marked runnable (``<!-- runnable -->`` on the line before it) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))


def _runnable(path: Path) -> list[tuple[int, str]]:
    """The python blocks of ``path`` marked runnable, with the line each starts on."""
    text = path.read_text()
    out = []
    for m in re.finditer(r"<!-- runnable -->\n```python\n(.*?)\n```", text, flags=re.S):
        out.append((text[:m.start()].count("\n") + 1, m.group(1)))
    return out


BLOCKS = [(p, line, code) for p in [ROOT / "README.md", *PAGES] for line, code in _runnable(p)]


def test_the_readme_is_read_in_five_minutes():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220


def test_every_page_is_in_the_navigation_and_every_link_of_the_readme_exists():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(items):
        for item in items:
            for value in item.values():
                yield from (pages(value) if isinstance(value, list) else [value])

    assert sorted(pages(nav)) == sorted(p.name for p in PAGES)
    for target in re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text()):
        assert (ROOT / target).exists(), target


def test_there_are_runnable_blocks():
    assert BLOCKS, "no block marked <!-- runnable --> in README.md or docs/"


@pytest.mark.parametrize(("path", "line", "code"), BLOCKS, ids=[f"{p.name}:{n}" for p, n, _ in BLOCKS])
def test_a_runnable_block_runs(path, line, code):
    exec(compile(code, f"{path.name}:{line}", "exec"), {"__name__": "__docs__"})
