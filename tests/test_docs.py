"""The documentation stays a front door and a set of pages that hold together.

- README.md is at most 300 lines (issue 28): reference material lives in docs/.
- Every relative link and image in README.md, docs/*.md and benchmarks/results/*.md points to a file that exists,
  and an anchor into a markdown file names one of its headings (GitHub's slugs).
- The README names every `make` target (its table of targets, or the two commands).
- Every config key in reasoner/config.py has a row in docs/training.md's "Every config key" with its default.
"""

import dataclasses
import re
from pathlib import Path

import pytest

from reasoner.config import Config

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks" / "results").glob("*.md")]
)

# Pages other branches are writing (issue 28's helpers); the README already links them. A link to one of these may
# point nowhere until it lands; once every one is on main, empty this.
COMING: set[str] = set()

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _links(text: str) -> list[str]:
    """The targets of markdown links and images, outside code."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens kept), spaces to hyphens.

    >>> _slug("## Code RL: `make train-code`")
    'code-rl-make-train-code'
    >>> _slug("## LoRA (`model.lora`)")
    'lora-modellora'
    """
    text = heading.lstrip("#").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        if re.match(r"#{1,6} ", line):
            slug = _slug(line)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference material to docs/ "
        "and superseded figures to benchmarks/results/<topic>-history.md"
    )


def test_readme_names_every_make_target():
    makefile = (ROOT / "Makefile").read_text()
    targets = {t for line in re.findall(r"^\.PHONY:(.*)$", makefile, re.M) for t in line.split()}
    readme = (ROOT / "README.md").read_text()
    missing = sorted(t for t in targets if not re.search(rf"`make {re.escape(t)}\b", readme))
    assert not missing, f"README.md does not name make {missing}: add a row to its table of make targets"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_that_exist(page):
    broken = []
    for target in _links(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            if dest.is_relative_to(ROOT) and str(dest.relative_to(ROOT)) in COMING:
                continue
            broken.append(
                f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})"
            )
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)} links to: " + "; ".join(broken)


def _keys(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _default(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_every_config_key_is_documented_with_its_default():
    text = (ROOT / "docs" / "training.md").read_text()
    wrong = []
    for key, value in _keys(Config()):
        row = f"| `{key}` | `{_default(value)}` |"
        if row not in text:
            wrong.append(row)
    assert not wrong, (
        "docs/training.md (Every config key) lacks these rows, or has another default: add or fix "
        + "; ".join(wrong)
    )
