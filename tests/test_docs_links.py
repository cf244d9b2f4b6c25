"""The README and the docs/ pages hold together: every relative link names a
file of the repository and, with `#anchor`, a heading of that file (as GitHub
makes anchors from headings), and no page points outside the repository."""

import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [
    ROOT / "README.md",
    ROOT / "BENCHMARKS.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$")


def prose(page: Path) -> str:
    """`page` without its fenced blocks and inline code, where a bracket is
    not a link."""
    text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(), flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of `page`: lower case, without
    punctuation, spaces as hyphens, a repeated one numbered."""
    text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(), flags=re.S | re.M)
    seen: Counter[str] = Counter()
    found = set()
    for line in text.split("\n"):
        heading = HEADING.match(line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page))
        if not re.match(r"[a-z]+:", target)
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_names_a_file_and_a_heading_that_exist(
    page: Path,
) -> None:
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), f"{page.name} links to {target}: no such file"
        assert linked.is_relative_to(ROOT), f"{page.name} links outside: {target}"
        if anchor:
            assert anchor in anchors(linked), (
                f"{page.name} links to {target}: {linked.name} has no such heading"
            )


def test_the_readme_links_every_docs_page_the_changelog_and_the_licence() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in relative_links(ROOT / "README.md")
    }
    for page in [*PAGES[1:], ROOT / "CHANGELOG.md", ROOT / "LICENSE"]:
        assert page in linked, f"the README does not link {page.name}"
