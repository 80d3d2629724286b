"""The README a newcomer reads in ten minutes (issue 23 item 6): short, with a table of contents,
every link and picture it shows present in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_the_readme_is_short_and_has_a_table_of_contents() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    contents = text[text.index("**Contents.**"):].split("\n\n", 1)[0]
    for title in sections:
        anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
        assert f"(#{anchor})" in contents, (title, anchor)


def test_every_local_link_and_picture_of_the_readme_and_docs_exists() -> None:
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"
