"""The documentation's relative links lead somewhere, and the README stays a front page.

Checked: README.md, every docs/*.md, benchmarks/README.md and every README.md under facesearch/. A link
is `[text](target)`; web and mail links and pure `#anchor` links are left alone, and a `#fragment` is cut
from a path (anchors are not checked). Code blocks and inline code are skipped: `x[0](y)` is not a link.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12_000  # bytes

FENCED = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:")


def _documents() -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
    found += sorted((ROOT / "facesearch").rglob("README.md"))
    return [path for path in found if path.is_file()]


def _link_targets(text: str) -> list[str]:
    text = INLINE_CODE.sub("", FENCED.sub("", text))
    return [target for target in LINK.findall(text) if not target.startswith(EXTERNAL) and not target.startswith("#")]


def _broken_links(path: Path) -> list[str]:
    broken = []
    for target in _link_targets(path.read_text(encoding="utf-8")):
        relative = target.split("#", 1)[0]
        if not (path.parent / relative).exists():
            broken.append(target)
    return broken


DOCUMENTS = _documents()


def test_the_documents_are_found():
    names = {path.relative_to(ROOT).as_posix() for path in DOCUMENTS}
    assert {"README.md", "benchmarks/README.md", "facesearch/index/README.md"} <= names, sorted(names)
    assert any(name.startswith("docs/") for name in names), sorted(names)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_exists(path: Path):
    broken = _broken_links(path)
    assert not broken, f"{path.relative_to(ROOT).as_posix()}: links to missing files: {broken}"


def test_the_readme_is_a_front_page():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size:,} bytes; the limit is {README_LIMIT:,}: move detail to docs/"


def test_links_are_found_outside_code_only():
    text = "see [a](docs/a.md#part), [web](https://x.org), [top](#top)\n```\nx[0](y)\n```\nand `m[1](z)`"
    assert _link_targets(text) == ["docs/a.md#part"]
