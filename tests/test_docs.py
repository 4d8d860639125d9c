"""Every code block of README.md and docs/*.md works as written.

The docs mark each fenced block with an info string:

* ```` ```python ````: a complete program. It runs in a fresh directory with the venv's Python
  and must exit 0 with nothing on stderr (the library prints nothing unless asked). A block
  whose first line is ``# file: NAME.py`` is also saved under that name, so later blocks of the
  same page can import it (the guide builds ``notes_app.py`` and then tests it).
* ```` ```python test ````: a pytest module, run by pytest in a fresh project directory with no
  pytest configuration (as in a new project), after the page's earlier ``# file:`` blocks.
* ```` ```python fragment ````: a piece of a larger program (it uses names defined elsewhere).
  It is only compiled (top-level ``await`` allowed), so it at least parses.
* anything else (``bash``, ``text``, ``json``, ``html``, ``js``...) is not executed here: shell
  commands start servers or install things, and browser code is covered by the browser tests.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^`\n]*)$")
FILE_MARK = re.compile(r"^# file: (?P<name>[\w./-]+\.py)\s*$")
TIMEOUT = 120


@dataclass
class Block:
    page: Path
    line: int
    info: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        words = self.info.split()
        if not words or words[0] != "python":
            return "other"
        return words[1] if len(words) > 1 else "program"

    @property
    def file_name(self) -> str | None:
        first = self.code.splitlines()[0] if self.code.strip() else ""
        found = FILE_MARK.match(first)
        return found.group("name") if found else None


def blocks_of(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening.group("fence"), len(opening.group("indent"))
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        found.append(Block(page, i + 1, opening.group("info").strip(), "\n".join(body) + "\n"))
        i = j + 1
    return found


ALL = [block for page in PAGES for block in blocks_of(page)]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "S3DB_"))}
    return {**clean, "PYTHONPATH": "", "PYTHONDONTWRITEBYTECODE": "1"}


def prepare(block: Block, directory: Path) -> None:
    """Write the page's ``# file:`` blocks that come before ``block`` into ``directory``."""
    for other in blocks_of(block.page):
        if other.line >= block.line:
            break
        if other.kind in ("program", "test") and other.file_name:
            (directory / other.file_name).write_text(other.code)


def test_every_python_block_says_what_it_is() -> None:
    unknown = [b.id for b in ALL if b.kind not in ("program", "test", "fragment", "other")]
    assert not unknown, f"use ```python, ```python test or ```python fragment: {unknown}"


@pytest.mark.parametrize("block", [b for b in ALL if b.kind == "fragment"], ids=lambda b: b.id)
def test_fragment_parses(block: Block) -> None:
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


@pytest.mark.parametrize("block", [b for b in ALL if b.kind == "program"], ids=lambda b: b.id)
def test_program_runs(block: Block, tmp_path: Path) -> None:
    prepare(block, tmp_path)
    script = tmp_path / (block.file_name or "snippet.py")
    script.write_text(block.code)
    done = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}\n{done.stderr}"
    assert done.stderr == "", f"{block.id} wrote to stderr:\n{done.stderr}"


@pytest.mark.parametrize("block", [b for b in ALL if b.kind == "test"], ids=lambda b: b.id)
def test_pytest_block_passes_in_a_new_project(block: Block, tmp_path: Path) -> None:
    prepare(block, tmp_path)
    (tmp_path / (block.file_name or "test_snippet.py")).write_text(block.code)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}\n{done.stderr}"


# Pages a user of the package reads: they must not point at material the user does not have (the
# project's specification, the shared folder, section signs, or the original JavaScript examples
# the project was built from, once called "the seed"). Example READMEs are checked here but their
# code blocks are not run by this module (the examples' own tests cover them).
USER_PAGES = [*PAGES, *sorted(ROOT.glob("examples/*/README.md"))]
# "seed" as a word in any form ("seed", "Seed's", "seeds"); identifiers such as the test file
# tests/test_seed_clients.py, the folder tests/seed_clients/ or the API name
# WebSocketPlugin.from_seed (docs/options.md) are not words: \b does not stop at "_".
OUT_OF_REACH = re.compile(r"\bSPEC\b|\.\./shared|§|(?i:\bseed(?:s|ed|ing)?\b)")


def out_of_reach(page: Path) -> list[str]:
    return [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if OUT_OF_REACH.search(line)
    ]


@pytest.mark.parametrize(
    ("line", "banned"),
    [
        ("The seed's React ChatRoom", True),
        ("what the Seed intends", True),
        ("150 operations per seed", True),
        ("both seeds agree", True),
        ("as seeded", True),
        ("see SPEC 4.3", True),
        ("see ../shared/notes.md", True),
        ("as in § 4", True),
        ("tests/test_seed_clients.py runs it unchanged", False),
        ("the copies under tests/seed_clients/", False),
        ("the original JavaScript example", False),
        ("`WebSocketPlugin.from_seed(**options)` maps `SEED_KEYWORDS`", False),
        ("a spec of the format", False),
    ],
)
def test_the_ban_catches_what_it_should(line: str, banned: bool) -> None:
    assert bool(OUT_OF_REACH.search(line)) is banned, line


def test_docs_stand_on_their_own() -> None:
    """No pointer to material a user of the package does not have (README, docs/, examples)."""
    assert len(USER_PAGES) >= len(PAGES) + 7, "the example READMEs were not found"
    found = [hit for page in USER_PAGES for hit in out_of_reach(page)]
    assert not found, "user docs point at material users do not have:\n" + "\n".join(found)


def clients_left_open(block: Block) -> list[str]:
    """The ``Client(...)`` calls of a python block that are not the subject of an ``async with``
    (a client opened otherwise stays open when the code between fails: "Unclosed client
    session" and "Event loop is closed" tracebacks)."""
    tree = compile(block.code, block.id, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    managed = {id(item.context_expr) for node in ast.walk(tree) if isinstance(node, ast.AsyncWith) for item in node.items}
    # A bare ``Client(url, token=None, ...)`` line is a signature (options.md), not a client.
    managed |= {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        f"{block.id} (+{node.lineno - 1}): {ast.unparse(node)[:60]}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Client"
        and id(node) not in managed
    ]


def test_the_clients_of_the_docs_are_opened_with_async_with() -> None:
    found = [hit for b in ALL if b.kind in ("program", "test", "fragment") for hit in clients_left_open(b)]
    assert not found, "open clients with `async with Client(...) as client:`\n" + "\n".join(found)
    assert not clients_left_open(Block(ROOT, 1, "python", "async with Client(url) as c:\n    pass\n"))
    assert clients_left_open(Block(ROOT, 1, "python", "c = await Client(url).connect()\n"))
