"""The lowest versions pyproject.toml allows are versions the code runs on.

Each floor is checked against the newest API the code uses from that distribution (found by
reading the sources, so removing the use retires the check) and against what our exact pins
require of it: a floor below either would let pip install an s3db that fails at run time or
does not resolve. CI can then run once on the floors (``pip install -c`` with ``==`` floors).
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("s3db_core", "s3db_ws_plugin", "s3db_auth_drivers")


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += [r for r in extra if not r.startswith("s3db[")]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def floor(req: Requirement) -> Version | None:
    """The lowest version ``req`` admits (``>=``/``==``/``~=``), None if unbounded below."""
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def sources(*roots: str, suffix: str = ".py") -> str:
    return "\n".join(
        path.read_text() for root in roots for path in sorted((ROOT / root).rglob(f"*{suffix}"))
    )


# (distribution, minimum version, what needs it, pattern, where the pattern is looked for)
API_FLOORS = [
    ("aiohttp", "3.11", "WebSocketResponse.send_frame", r"\.send_frame\(", PACKAGES),
    ("structlog", "25.5", "capture_logs(processors=...)", r"capture_logs\(processors=", ("tests",)),
    ("pluggy", "1.1", "HookImpl.wrapper (new-style wrappers)", r"\.wrapper\b", PACKAGES),
    ("websockets", "14.0", "the asyncio websockets.ClientConnection", r"websockets\.ClientConnection", ("tests",)),
    ("pytest-asyncio", "0.24", "asyncio_default_fixture_loop_scope", r"asyncio_default_fixture_loop_scope", ("pyproject.toml",)),
    ("pytest", "8.2", "pytest-asyncio 0.24 itself", r"asyncio_default_fixture_loop_scope", ("pyproject.toml",)),
]  # fmt: skip


@pytest.mark.parametrize(("dist", "minimum", "why", "pattern", "roots"), API_FLOORS)
def test_each_floor_admits_no_version_without_the_api_the_code_uses(
    dist, minimum, why, pattern, roots
):
    text = "\n".join(
        (ROOT / root).read_text() if root.endswith(".toml") else sources(root) for root in roots
    )
    assert re.search(pattern, text), f"{why} is no longer used: drop its row from API_FLOORS"
    low = floor(declared()[dist])
    assert low is not None and low >= Version(minimum), (
        f"pyproject.toml lets pip install {dist} {low}, but the code uses {why} "
        f"(needs {dist}>={minimum})"
    )


def test_floors_admit_what_the_exact_pins_require():
    """An exact pin (``aiobotocore==3.10.0``) brings its own lower bounds: ours must not be lower,
    or the floors do not resolve together."""
    ours = declared()
    pinned = [r for r in ours.values() if any(s.operator == "==" for s in r.specifier)]
    problems = []
    for pin in pinned:
        for raw in requires(pin.name) or []:
            dep = Requirement(raw)
            if dep.marker is not None and not dep.marker.evaluate({"extra": ""}):
                continue
            mine = ours.get(dep.name.lower())
            needed = floor(dep)
            if mine is None or needed is None:
                continue
            low = floor(mine)
            if low is None or low < needed:
                problems.append(f"{dep.name}: ours allows {low}, {pin} needs {dep.specifier}")
    assert not problems, problems


def test_runtime_dependencies_are_imported_by_the_packages():
    """A runtime dependency the packages never import belongs in an extra (boto3 is only the
    test suite's S3 client)."""
    imports = {"pyjwt": "jwt", "prometheus-client": "prometheus_client"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    code = sources(*PACKAGES)
    unused = []
    for raw in project["dependencies"]:
        name = Requirement(raw).name.lower()
        module = imports.get(name, name.replace("-", "_"))
        if not re.search(rf"^\s*(import|from) {module}\b", code, re.M):
            unused.append(name)
    assert not unused, unused


def test_floor_helper_reads_specifiers():
    assert floor(Requirement("a>=3.11,<4")) == Version("3.11")
    assert floor(Requirement("a==3.10.0")) == Version("3.10.0")
    assert floor(Requirement("a")) is None
    assert SpecifierSet(">=3.14").contains("3.14.0")
