"""Docs that run: every command and Python block of README.md and docs/*.md is executed here.

A block's info string gives its language; `bash` and `python` blocks run, unless the info string
says `norun: <reason>` (a grid that takes minutes, a server, a cluster: the reason names the test
that covers it). Other languages (`text`: an output shown) are not commands. The Python blocks of
one page run in order in one process, so a page can define something (a method) and then use it.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^\1```[ \t]*$", re.M | re.S)
RUNNABLE = ("bash", "python")
KNOWN = (*RUNNABLE, "text", "yaml")


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(language, reason not to run or "", body) of every fenced block of a page."""
    out = []
    for m in FENCE.finditer(page.read_text()):
        language, _, rest = m["info"].strip().partition(" ")
        indent = len(m[1])
        body = "\n".join(line[indent:] for line in m["body"].splitlines())
        reason = rest.strip().removeprefix("norun:").strip() if rest.strip().startswith("norun") else ""
        out.append((language, reason, body))
    return out


def test_every_block_says_what_it_is():
    for page in PAGES:
        for language, reason, body in blocks(page):
            assert language in KNOWN, f"{page.name}: a block without a known language:\n{body}"
            if reason == "" and "norun" in body.splitlines()[0]:
                pytest.fail(f"{page.name}: a norun mark without its reason")


def _runnable(language: str) -> list:
    return [pytest.param(page, id=page.name) for page in PAGES
            if any(lang == language and not reason for lang, reason, _ in blocks(page))]


@pytest.mark.parametrize("page", _runnable("python"))
def test_python_blocks_run(page, tmp_path):
    code = "\n\n".join(body for lang, reason, body in blocks(page) if lang == "python" and not reason)
    script = tmp_path / "page.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, f"{page.name}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"


@pytest.mark.parametrize("page", _runnable("bash"))
def test_bash_blocks_run(page):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for lang, reason, body in blocks(page):
        if lang == "bash" and not reason:
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=REPO, env=env,
                                 capture_output=True, text=True)
            assert out.returncode == 0, f"{page.name}:\n{body}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
