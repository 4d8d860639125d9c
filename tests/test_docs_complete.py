"""The reference docs name everything a user can set or receive: every constructor option of
``Database``, ``WebSocketPlugin`` and ``Client`` and every command-line flag is in
docs/options.md; every error code, close code and message type is in docs/protocol.md; the
Python client has an exception for every error code the server sends, and no other."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from pathlib import Path

import pytest

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.cli import build_parser
from s3db_ws_plugin.client import Client, ClientError, ConnectionLost, RequestTimeout, SlowConsumer
from s3db_ws_plugin.client.errors import ERRORS
from s3db_ws_plugin.handlers import Handlers
from s3db_ws_plugin.protocol import CloseCode, ErrorCode, Message

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = (ROOT / "docs" / "options.md").read_text()
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()
SERVER_PACKAGE = ROOT / "s3db_ws_plugin"


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole "## " line) up to the next heading of that level."""
    level = heading.split(" ", 1)[0] + " "
    start = text.index(heading + "\n")
    end = text.find("\n" + level, start + len(heading))
    return text[start : end if end != -1 else len(text)]


def table_names(text: str) -> set[str]:
    """The backquoted names in the first column of the markdown tables in ``text``."""
    return set(re.findall(r"^\| `([^`]+)`", text, flags=re.MULTILINE))


def first_table(text: str) -> str:
    """The first markdown table of ``text``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def arguments(function: object) -> list[str]:
    params = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
    return [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]


@pytest.mark.parametrize(
    ("cls", "heading"),
    [(Database, "## Database"), (WebSocketPlugin, "## WebSocketPlugin"), (Client, "## Python client")],
)
def test_every_constructor_option_has_a_row_in_options_md(cls, heading):
    documented = table_names(section(OPTIONS, heading))
    missing = [name for name in arguments(cls.__init__) if name not in documented]
    assert missing == [], f"docs/options.md, {heading!r}: add a row for {missing}"


@pytest.mark.parametrize(
    ("function", "heading", "table_after"),
    [
        (Database.create_resource, "## Resources: `create_resource`", ""),
        (Client.subscribe, "## Python client", "`client.subscribe("),
    ],
)
def test_every_argument_of_create_resource_and_subscribe_has_a_row(function, heading, table_after):
    text = section(OPTIONS, heading)
    documented = table_names(first_table(text[text.index(table_after) :]))
    missing = [name for name in arguments(function) if name not in documented]
    assert missing == [], f"docs/options.md, {heading!r} {table_after}: add a row for {missing}"


def flags(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Command (``""`` for the top level) -> its option strings and positional names."""
    found: dict[str, list[str]] = {}
    todo: list[tuple[str, argparse.ArgumentParser]] = [("", parser)]
    while todo:
        name, current = todo.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.items())
            elif isinstance(action, argparse._HelpAction):
                continue
            elif action.option_strings:
                found.setdefault(name, []).extend(action.option_strings)
            else:
                found.setdefault(name, []).append(action.dest.upper())
    return found


def test_every_command_line_flag_is_in_options_md():
    cli = section(OPTIONS, "## Command line")
    found = flags(build_parser())
    assert {"serve", "tail", "repair"} <= set(found) and "--workers" in found["serve"]
    missing = []
    for command, names in found.items():
        if command and f"`s3db {command}" not in cli:
            missing.append(f"s3db {command}")
        for flag in names:
            if flag.startswith("-"):
                # "--flag" (or "/-f" after its long form) as a word of its own, not a prefix of
                # a longer flag.
                if not re.search(rf"[`/]{re.escape(flag)}(?![\w-])", cli):
                    missing.append(f"{command or 's3db'} {flag}")
    assert missing == [], f"docs/options.md 'Command line' lacks {missing}"


def test_every_flag_of_the_examples_is_in_options_md(capsys):
    from examples.common import parse_options

    with pytest.raises(SystemExit):
        parse_options("chat", ["--help"])
    given = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)) - {"--help"}
    assert {"--port", "--db", "--dev"} <= given
    examples = section(OPTIONS, "## Examples")
    missing = sorted(flag for flag in given if not re.search(rf"{flag}(?![\w-])", examples))
    assert missing == [], f"docs/options.md 'Examples' lacks {missing}"


def test_every_error_code_is_in_protocol_md():
    documented = table_names(section(PROTOCOL, "## Errors"))
    codes = {v for k, v in vars(ErrorCode).items() if k.isupper()}
    assert codes - documented == set(), f"docs/protocol.md 'Errors' lacks {codes - documented}"
    assert documented - codes == set(), f"docs/protocol.md documents unknown codes {documented - codes}"


def test_every_close_code_is_in_protocol_md():
    rows = set(re.findall(r"^\| (\d{4}) \|", section(PROTOCOL, "## Close codes"), re.MULTILINE))
    codes = {str(v) for k, v in vars(CloseCode).items() if k.isupper()}
    assert codes - rows == set(), f"docs/protocol.md 'Close codes' lacks {codes - rows}"


def server_frame_types() -> set[str]:
    """Every ``type`` the server writes: the first argument of ``reply(...)`` (directly or
    through ``functools.partial(reply, ...)``) and ``{"type": "..."}`` literals, in every
    server module."""
    found: set[str] = set()
    for path in SERVER_PACKAGE.rglob("*.py"):
        if "client" in path.relative_to(SERVER_PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                args = node.args
                callee = node.func
                name = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", "")
                if name == "partial" and args and isinstance(args[0], ast.Name):
                    name, args = args[0].id, args[1:]
                if name == "reply" and args and isinstance(args[0], ast.Constant):
                    found.add(args[0].value)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "type"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        found.add(value.value)
    return found


def client_frame_types() -> set[str]:
    declared = (getattr(attr, "message", None) for attr in vars(Handlers).values())
    return {m.type for m in declared if isinstance(m, Message)}


def test_the_frame_type_scan_sees_both_directions():
    # The scan is not vacuous: it finds the frames every client meets.
    assert {"connected", "error", "event", "pong", "subscribed", "data"} <= server_frame_types()
    assert {"ping", "auth", "subscribe", "list", "insert"} <= client_frame_types()


def test_every_message_type_is_in_protocol_md():
    types = server_frame_types() | client_frame_types()
    missing = sorted(t for t in types if f"`{t}" not in PROTOCOL)
    assert missing == [], f"docs/protocol.md never names the message type(s) {missing}"


def test_the_client_has_one_exception_per_server_error_code():
    server = {v for k, v in vars(ErrorCode).items() if k.isupper()}
    assert set(ERRORS) == server
    for code, cls in ERRORS.items():
        assert issubclass(cls, ClientError) and cls.code == code
    # The client's own failures never take a code the server sends.
    own = {ClientError.code, ConnectionLost.code, RequestTimeout.code, SlowConsumer.code}
    assert own.isdisjoint(server)
