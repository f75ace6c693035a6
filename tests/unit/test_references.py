"""What the repository's files cite exists: Markdown links (and their anchors) and the paths that
comments, docstrings and docs name. The README stays a page a user reads (at most 300 lines).

Pure: reads the repository's files, runs nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())

# the project's own top-level folders: a path that starts with one of them names a file of the project
TOP = ("haplane", "flows", "tasks", "blocks", "deployments", "tests", "bench", "docs", ".ci")
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./*<>-]*[\w*>])")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def tracked(*suffixes: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in out.split() if name.endswith(suffixes)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"`|\*\*|\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in md.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def exists(path: str) -> bool:
    # a glob or a pattern names files by shape (tests/test_*.py, <change>-grow-i): not checked
    if any(c in path for c in "*<>{}"):
        return True
    return (ROOT / path).exists()


def test_markdown_links_resolve():
    broken = []
    for md in tracked(".md"):
        fenced = False
        for n, line in enumerate(md.read_text().splitlines(), 1):
            if FENCE.match(line):
                fenced = not fenced
            if fenced:
                continue
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    continue
                file, _, anchor = target.partition("#")
                dest = (md.parent / file).resolve() if file else md
                where = f"{md.relative_to(ROOT)}:{n}: {target}"
                if not dest.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_cited_paths_exist():
    """A path of the project named in code, comments, docstrings or docs is a file or folder of the project."""
    missing = []
    for f in tracked(".py", ".md", ".sh", ".yaml", ".toml") + [ROOT / ".ci" / "run"]:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            for path in PATH.findall(line):
                path = path.rstrip(".")
                if not exists(path):
                    missing.append(f"{f.relative_to(ROOT)}:{n}: {path}")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_readme_is_a_page_a_user_reads():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move design and figures to docs/"
