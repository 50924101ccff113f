"""The README and docs/ say what is true: their links resolve and the README's runnable blocks run.

The marker: a fenced block whose info string is ``bash runnable`` (three backticks, then
``bash runnable``) is run by this test, as written, with ``bash -euo pipefail`` in an empty
temporary directory with the virtual environment's ``bin`` first on ``PATH``, and must exit 0.
Mark a block runnable only if it takes seconds and needs no launcher (no ``horovodrun``,
``mpirun``, ``sbatch`` or ``make demo``); every other block stays plain ``bash``.

Links: every relative link or image in README.md and docs/*.md must name an existing file
(resolved from the file that holds it); a ``#anchor`` must be the GitHub slug of a heading
of its target. Links inside code (fenced blocks and inline code spans) are not links.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = ("bash", "runnable")  # the info string's words that mark a block to run
README_MAX_LINES = 250  # issue 21: a README a newcomer reads in five minutes

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(info string, body)`` of every fenced code block, in order."""
    return [(match.group(1).strip(), match.group(2)) for match in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without fenced blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(heading) for heading in HEADING.findall(prose(page.read_text(encoding="utf-8")))}


def relative_links(page: Path) -> list[str]:
    found = LINK.findall(prose(page.read_text(encoding="utf-8")))
    return [target for target in found if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)]  # no http:, mailto:


def runnable_blocks() -> list[str]:
    return [body for info, body in fenced_blocks(README.read_text(encoding="utf-8"))
            if tuple(info.split()) == RUNNABLE]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_readme_is_short_and_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)}
    unlinked = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_readme_has_runnable_blocks_and_its_python_parses():
    assert runnable_blocks(), "README.md has no ```bash runnable block; the quick start should have one"
    for info, body in fenced_blocks(README.read_text(encoding="utf-8")):
        if info.split()[:1] == ["python"]:
            compile(body, "README.md", "exec")  # a SyntaxError names the line


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda block: block.splitlines()[0][:60])
def test_runnable_readme_block_runs_as_written(block, tmp_path):
    bin_dir = Path(sys.executable).parent  # the virtual environment's bin, where distributed-h5 lives
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)  # a bound on a hang, not on speed
    assert result.returncode == 0, f"{block}\nexit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
