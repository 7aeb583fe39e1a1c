"""The README is the front door and the docs hold together: README.md stays short and starts with its two commands,
and every relative link and ``#anchor`` in README.md and docs/*.md resolves, the anchors computed the way GitHub
computes them. No Ray, no servers: plain text."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 250

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
# [text](target) or ![alt](target), text with at most one level of nested brackets, an optional "title"
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^\s()<>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, ...
# what GitHub keeps of a heading: letters, marks, decimal and letter numbers, connector punctuation (_), '-' and ' '
KEPT_CATEGORIES = ("L", "M", "Nd", "Nl", "Pc")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks; the fences themselves are left out too."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not match.group(2).strip():
            fence = None
        elif fence is None:
            lines.append((number, line))
    return lines


def code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """Each fenced code block as (line number of its opening fence, its lines)."""
    blocks, fence, body, start = [], None, [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, body, start = match.group(1), [], number
        elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not match.group(2).strip():
            blocks.append((start, body))
            fence = None
        elif fence is not None:
            body.append(line)
    return blocks


def rendered_text(markdown: str) -> str:
    """The text GitHub renders for inline Markdown: code spans keep their content verbatim; outside them links and
    images become their text, HTML tags and backslash escapes go, and emphasis markers go ('*' always, '_' only where
    it is not inside a word, as CommonMark reads it)."""
    parts, last = [], 0
    for match in CODE_SPAN.finditer(markdown):
        parts.append(_rendered_prose(markdown[last:match.start()]))
        parts.append(match.group(2).strip(" ") or match.group(2))
        last = match.end()
    parts.append(_rendered_prose(markdown[last:]))
    return "".join(parts)


def _rendered_prose(text: str) -> str:
    text = INLINE_LINK.sub(lambda m: m.group(1), text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)
    text = text.replace("*", "")
    return re.sub(r"(?<![^\W_])_+|_+(?![^\W_])", "", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading (before de-duplication): its rendered text lowercased, every character
    removed that is not a letter, mark, number, '_', '-' or space, then each space a '-'. So 'α' stays, '×', '≤',
    '—', '+', ':' and ',' go, and 'a + b' becomes 'a--b'."""
    text = rendered_text(heading).strip().lower()
    kept = "".join(c for c in text if c in "- " or unicodedata.category(c).startswith(KEPT_CATEGORIES))
    return kept.replace(" ", "-")


def headings(text: str) -> list[str]:
    """The Markdown source of every heading outside code blocks, ATX (#) and setext (underlined), in order."""
    found, previous = [], None
    for number, line in prose_lines(text):
        atx = ATX_HEADING.match(line)
        if atx:
            found.append(atx.group(2) or "")
            previous = None
            continue
        underline = SETEXT_UNDERLINE.match(line)
        if underline and previous is not None and previous[0] == number - 1 and previous[1].strip() \
                and not re.match(r"^\s*([-*+>|]|\d+[.)]\s)", previous[1]):
            found.append(previous[1].strip())
            previous = None
            continue
        previous = (number, line)
    return found


def anchors(text: str) -> set[str]:
    """Every anchor a page has: its headings' slugs, a repeated one suffixed -1, -2, ... as GitHub does, and the
    names of explicit HTML anchors."""
    occurrences: dict[str, int] = {}
    found = set()
    for heading in headings(text):
        slug = original = github_slug(heading)
        while slug in occurrences:
            occurrences[original] += 1
            slug = f"{original}-{occurrences[original]}"
        occurrences[slug] = 0
        found.add(slug)
    return found | {name for _, line in prose_lines(text) for name in HTML_ANCHOR.findall(line)}


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link and image outside code blocks and code spans; a link's text may run
    over a line break (the line is the one its '[' is on)."""
    prose = dict(prose_lines(text))
    lines = [CODE_SPAN.sub(lambda m: " " * len(m.group(0)), prose.get(number, ""))
             for number in range(1, len(text.splitlines()) + 1)]
    joined = "\n".join(lines)
    return [(joined.count("\n", 0, match.start()) + 1, match.group(2)) for match in INLINE_LINK.finditer(joined)]


def broken_links(files: list[Path]) -> list[str]:
    """'FILE:LINE: TARGET: why' for every relative link in the files whose file is missing or whose anchor matches no
    heading of the page it points to. External links (any scheme: http, https, mailto) are not followed."""
    problems, page_anchors = [], {}
    for source in files:
        for number, target in links(source.read_text(encoding="utf-8")):
            if not target or SCHEME.match(target):
                continue
            path, _, anchor = target.partition("#")
            page = (source.parent / unquote(path)).resolve() if path else source.resolve()
            where = f"{source.name}:{number}: {target}"
            if not page.exists():
                problems.append(f"{where}: no such file {page}")
                continue
            if not anchor or page.suffix.lower() != ".md":  # a code file's #L10 anchors are GitHub's, not headings
                continue
            if page not in page_anchors:
                page_anchors[page] = anchors(page.read_text(encoding="utf-8"))
            if unquote(anchor) not in page_anchors[page]:
                problems.append(f"{where}: no heading gives #{anchor} in {page.name}")
    return problems


# --- the slug, against headings of these docs and GitHub's own anchors for them --------------------------------------

@pytest.mark.parametrize("heading, slug", [
    ("Synthetic, all paired: Table 1 under the paper's protocol",
     "synthetic-all-paired-table-1-under-the-papers-protocol"),
    ("Hyperparameter study on the synthetic benchmark (Ray Tune + Optuna + ASHA)",
     "hyperparameter-study-on-the-synthetic-benchmark-ray-tune--optuna--asha"),
    ("Penn Action, homogeneous: the same annotations as HQ and, degraded, as LQ (`penn13` both)",
     "penn-action-homogeneous-the-same-annotations-as-hq-and-degraded-as-lq-penn13-both"),
    ("Penn Action cut to 300 training clips: a schedule chosen from the data",
     "penn-action-cut-to-300-training-clips-a-schedule-chosen-from-the-data"),
    ("Synthetic, half the samples solitary: Table 5 under the paper's protocol, with the learning-rate confound "
     "separated", "synthetic-half-the-samples-solitary-table-5-under-the-papers-protocol-with-the-learning-rate-"
                  "confound-separated"),
    ("Measuring it: `partkd bench train`", "measuring-it-partkd-bench-train"),
    ("Writing: nothing good is lost", "writing-nothing-good-is-lost"),
    ("HQ side of the loss", "hq-side-of-the-loss"),
    ("Real data: Penn Action (human annotations as HQ, **simulated** LQ)",
     "real-data-penn-action-human-annotations-as-hq-simulated-lq"),
    ("Earlier results: the robustness view (before issue 13)", "earlier-results-the-robustness-view-before-issue-13"),
    ("Finish — best config vs the paper's defaults", "finish--best-config-vs-the-papers-defaults"),
    ("`loss.hq_source` and _bank_ negatives", "losshq_source-and-bank-negatives"),
    ("α, w and τ ×0.1 at ≤ 250 lines", "α-w-and-τ-01-at--250-lines"),
    ("Run on [Kubernetes](docs/kubernetes.md)!", "run-on-kubernetes"),
])
def test_slug_is_githubs(heading, slug):
    assert github_slug(heading) == slug


def test_repeated_headings_get_numbered_anchors_and_code_blocks_hold_no_headings():
    text = "# Notes\n\n## Notes\n\n```bash\n# Notes\n```\n\nNotes\n-----\n\n## Notes-1\n"
    # a literal 'Notes-1' after them finds its slug taken by the second 'Notes' and becomes notes-1-1, as on GitHub
    assert headings(text) == ["Notes", "Notes", "Notes", "Notes-1"]
    assert anchors(text) == {"notes", "notes-1", "notes-2", "notes-1-1"}


# --- the README -----------------------------------------------------------------------------------------------------

def test_readme_is_a_front_door_of_at_most_250_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move a topic into docs/"


def test_readme_opens_with_make_demo_and_make_test():
    text = README.read_text(encoding="utf-8")
    start, body = code_blocks(text)[0]
    commands = [line.split("#", 1)[0].strip() for line in body]
    assert [c for c in commands if c] == ["make demo", "make test"]
    before = [line for line in text.splitlines()[:start - 1] if line.strip()]
    assert len(before) == 1 and before[0].startswith("# "), f"only the title comes before the two commands: {before}"


def test_readme_links_every_docs_page():
    linked = {(README.parent / unquote(target.partition("#")[0])).resolve()
              for _, target in links(README.read_text(encoding="utf-8")) if not SCHEME.match(target)}
    assert {page.resolve() for page in DOCS} - linked == set()


# --- links and anchors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links([page]) == []


def test_the_checker_reports_a_missing_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B\n\n## Settings, `loss.tau` — in short\n\n```\n## Hidden\n```\n")
    (tmp_path / "a.md").write_text(
        "# A\n\n"
        "Good: [b](docs/b.md), [its section](docs/b.md#settings-losstau--in-short), [here](#a), "
        "[web](https://example.com/nothing.md#nowhere), [mail](mailto:someone@example.com).\n"
        "Bad: [gone](docs/missing.md) and [no such section](docs/b.md#hidden) and [self](#b).\n"
        "Over a line break: [a link\nthat wraps](docs/b.md#wrapped).\n\n"
        "```markdown\n[ignored in a code block](docs/also-missing.md)\n```\n\n"
        "Also ignored in a code span: `[x](nowhere.md)`.\n")
    problems = broken_links([tmp_path / "a.md"])
    assert len(problems) == 4, problems
    assert problems[0].startswith("a.md:4: docs/missing.md: no such file")
    assert problems[1].startswith("a.md:4: docs/b.md#hidden: no heading gives #hidden in b.md")
    assert problems[2].startswith("a.md:4: #b: no heading gives #b in a.md")
    assert problems[3].startswith("a.md:5: docs/b.md#wrapped: no heading gives #wrapped in b.md")
