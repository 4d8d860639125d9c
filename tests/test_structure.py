"""Meta-tests on how the code is cut and documented, like datasette's: every hookspec and every
entry-point group is documented with its signature, docs/architecture.md names every module of
the three packages, each message type is declared once, and no module reaches for another's
private function or attribute, nor imports one of its own package back at run time. Each failure
says exactly what to add or change."""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from pathlib import Path

import pytest

from s3db_core import hookspecs
from s3db_core.plugins import clear_entry_point_cache, load_entry_point
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.plugin import SEED_KEYWORDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("s3db_core", "s3db_ws_plugin", "s3db_auth_drivers")
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def user_docs() -> str:
    return "\n".join(
        p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )


def hookspec_signatures() -> dict[str, str]:
    """``name(arg, ...)`` of every hookspec, as the docs write it."""
    specs = {}
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("s3db_"):
            specs[name] = f"{name}({', '.join(inspect.signature(func).parameters)})"
    return specs


def test_there_are_hookspecs_to_check():
    assert "s3db_change" in hookspec_signatures()


@pytest.mark.parametrize("name", sorted(hookspec_signatures()))
def test_every_hookspec_is_documented_with_its_signature(name):
    signature = hookspec_signatures()[name]
    assert f"`{signature}`" in user_docs(), (
        f"document the hook `{signature}` in README.md (the hooks table) or docs/: "
        "when it fires and what a return value means"
    )


def entry_point_groups() -> dict[str, list[str]]:
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    return {group: sorted(names) for group, names in groups.items()}


@pytest.mark.parametrize("group", sorted(entry_point_groups()))
def test_every_entry_point_group_is_documented_with_its_built_ins(group):
    docs = user_docs()
    assert f"`{group}`" in docs, (
        f"document the entry-point group `{group}` in README.md's entry-point table: "
        "what a name maps to and the built-ins"
    )
    row = next(line for line in docs.splitlines() if line.startswith(f"| `{group}`"))
    missing = [name for name in entry_point_groups()[group] if f"`{name}`" not in row]
    if group != "pytest11":
        assert not missing, f"add the built-ins {missing} to the `{group}` row of README.md"


def modules(package: str) -> list[str]:
    """Every module of ``package`` as docs/architecture.md names it: its path in the package."""
    root = ROOT / package
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "__init__.py" or path.parent != root
    )


def section(package: str) -> str:
    text = ARCHITECTURE.read_text()
    match = re.search(rf"^## {package}\b.*?(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/architecture.md needs a section '## {package}'"
    return match.group(0)


@pytest.mark.parametrize("package", PACKAGES)
def test_architecture_names_every_module(package):
    text = section(package)
    missing = [m for m in modules(package) if f"`{m}`" not in text]
    assert not missing, (
        "docs/architecture.md, section '## {}': add a row per module, e.g. {}".format(
            package, "; ".join(f"| `{m}` | what it owns |" for m in missing)
        )
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_architecture_names_no_module_that_is_gone(package):
    rows = re.findall(r"^\| `([\w/]+\.py)` \|", section(package), re.M)
    gone = [row for row in rows if not (ROOT / package / row).exists()]
    assert not gone, (
        f"docs/architecture.md, section '## {package}': remove or rename the rows for {gone} "
        "(no such module)"
    )


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    if private:
                        offenders.append(f"{path.relative_to(ROOT)}: {node.module} {private}")
    assert not offenders, offenders


def test_each_message_type_is_declared_once_with_its_handler():
    handlers = WebSocketPlugin(port=0).handlers
    assert set(handlers.messages) == set(handlers.table)
    assert sorted(handlers.messages) == [
        "auth", "channel:message", "channel:update", "delete", "get", "insert", "join", "leave",
        "list", "ping", "subscribe", "unsubscribe", "update",
    ]  # fmt: skip
    assert {t for t, m in handlers.messages.items() if m.before_auth} == {"auth", "ping"}
    # How the session runs each (its declaration says it; no list elsewhere).
    assert {t for t, m in handlers.messages.items() if m.inline} == {"ping"}
    assert {t for t, m in handlers.messages.items() if m.barrier} == {
        "auth", "subscribe", "unsubscribe", "join", "leave",
    }  # fmt: skip


def test_the_constructor_takes_only_its_own_keyword_names():
    with pytest.raises(TypeError):
        WebSocketPlugin(rateLimit={"maxRequests": 1})  # type: ignore[call-arg]
    params = inspect.signature(WebSocketPlugin).parameters
    assert all(name in params for name in SEED_KEYWORDS.values())
    plugin = WebSocketPlugin.from_seed(port=0, maxMessageSize=4096, heartbeatInterval=None)
    assert (plugin.max_message_size, plugin.heartbeat_interval) == (4096, None)
    with pytest.raises(TypeError, match="max_message_size"):
        WebSocketPlugin.from_seed(maxMessageSize=1, max_message_size=2)


def test_a_new_plugin_can_be_read_attribute_by_attribute():
    """pluggy (1.5) reads every attribute of a plugin object when it registers it: none may
    raise before the plugin has started."""
    plugin = WebSocketPlugin(port=0)
    for name in dir(plugin):
        getattr(plugin, name)


def test_the_entry_point_loader_caches_and_clears():
    first = load_entry_point("s3db.storage", "memory")
    assert load_entry_point("s3db.storage", "memory") is first
    with pytest.raises(ValueError, match=r"unknown storage scheme 'nope' \(known: .*memory"):
        load_entry_point("s3db.storage", "nope", kind="storage scheme")
    clear_entry_point_cache()
    assert load_entry_point("s3db.storage", "memory") is first  # the same class, imported once


def test_every_package_ships_py_typed():
    missing = [p for p in PACKAGES if not (ROOT / p / "py.typed").exists()]
    assert not missing, f"add an empty py.typed to {missing} (and to package-data)"
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    assert all("py.typed" in data.get(p, []) for p in PACKAGES)


def _runtime_imports(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports when it runs (module-level and
    inside functions; ``if TYPE_CHECKING:`` blocks, which never run, left out)."""
    graph: dict[str, set[str]] = {}
    root = ROOT / package
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts = parts[:-1]
        name = ".".join(parts)
        here = parts if is_init else parts[:-1]  # the package a relative import starts from
        tree = ast.parse(path.read_text())
        skipped: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(n) for child in node.body for n in ast.walk(child))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                targets.add(module)
                targets.update(f"{module}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t.startswith(package + ".") or t == package}
    known = set(graph)
    return {m: {t for t in ts if t in known and t != m} for m, ts in graph.items()}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_at_run_time_inside_a_package(package):
    """A module never imports (at run time, even lazily inside a function) one that imports it
    back: the parts receive what they need (``server.Server``) instead of reaching back."""
    graph = _runtime_imports(package)
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if target == package:  # the package itself (its lazy __init__) is not a part
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles at run time: {cycles}"


def test_each_piece_of_per_connection_state_has_one_owner_that_registers_its_clean_up():
    """docs/architecture.md's per-connection table and the code agree both ways: every module
    that registers a clean-up with a connection (``.on_close(``) is named as the owner of a row
    forgotten by ``on_close``, and every such owner registers one."""
    text = ARCHITECTURE.read_text()
    table = text[text.index("### Per-connection state") :]
    rows = re.findall(r"^\| [^|]+ \| `([\w/]+\.py)` \| ([^|]+) \|$", table, re.M)
    assert rows, "docs/architecture.md needs the '### Per-connection state' table"
    documented = {module for module, how in rows if "`on_close`" in how}
    registering = {
        path.relative_to(ROOT / "s3db_ws_plugin").as_posix()
        for path in (ROOT / "s3db_ws_plugin").rglob("*.py")
        if ".on_close(" in path.read_text()
    }
    assert registering - documented == set(), (
        f"add a row (state | module | `on_close` ...) for {sorted(registering - documented)}"
    )
    assert documented - registering == set(), (
        f"these owners register no clean-up: {sorted(documented - registering)}"
    )
    owners = [module for module, _ in rows]
    assert all((ROOT / "s3db_ws_plugin" / m).exists() for m in owners), owners


# Private attributes one module still reads on another's objects, each with why it stays.
PRIVATE_ACCESS_ALLOWED = {
    ("s3db_core/resource.py", "_call_hook"): "a resource runs its database's hooks (its part)",
    ("s3db_core/resource.py", "_publish"): "a resource publishes through its database (its part)",
    ("s3db_core/brokers/base.py", "_replace"): "namedtuple's public API despite the underscore",
    ("s3db_ws_plugin/workers.py", "_exit"): "os._exit: the standard library's public API",
    ("s3db_core/cache.py", "_read"): "the cache fills through the resource's own store read "
    "(no cache, no hooks): the cache is part of the core's read path",
    ("s3db_ws_plugin/channels.py", "_overflow"): "a channel's held replay closes the socket as "
    "a full send queue does (the connection's one slow-consumer path)",
    ("s3db_ws_plugin/watch.py", "_lost"): "the watcher opens a new epoch on a broker that "
    "cannot append one now; a public Broker.new_epoch(resource) is the next step",
}


def _private_attribute_uses() -> list[tuple[str, str, int]]:
    """(module, attribute, line) for every ``x._name`` where ``x`` is not ``self``/``cls`` and
    ``_name`` is not one this module defines (a function, a class, ``self._name = ...``)."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            own = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    own.add(node.name)
                elif (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in ("self", "cls")
                ):
                    own.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    own.add(node.id)
                elif isinstance(node, ast.ClassDef):
                    own.add(node.name)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    and node.attr not in own
                ):
                    found.append((path.relative_to(ROOT).as_posix(), node.attr, node.lineno))
    return found


def test_no_module_reads_another_modules_private_attributes():
    offenders = [
        f"{module}:{line}: ._{attr[1:]}"
        for module, attr, line in _private_attribute_uses()
        if (module, attr) not in PRIVATE_ACCESS_ALLOWED
    ]
    assert not offenders, (
        f"use a public method of the other module instead (or allow-list it with a reason): {offenders}"
    )


def test_the_private_access_allow_list_holds_nothing_stale():
    used = {(module, attr) for module, attr, _ in _private_attribute_uses()}
    stale = sorted(set(PRIVATE_ACCESS_ALLOWED) - used)
    assert not stale, f"remove from PRIVATE_ACCESS_ALLOWED (no longer used): {stale}"


def test_the_plugin_settings_are_validated_once_and_frozen():
    """Every option lands in one frozen Settings; the parts read it and validate nothing."""
    import dataclasses

    plugin = WebSocketPlugin(port=0, max_queue_bytes=4096, rate_limit={"max_requests": 5})
    settings = plugin.settings
    assert settings.max_queue_bytes == 4096 and settings.replay_max_bytes == 2048
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_queue_bytes = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.rate_limit["max_requests"] = 1  # type: ignore[index]
    assert plugin.channels.server is plugin.handlers.server is plugin.sessions.server
    assert plugin.handlers.settings is settings
