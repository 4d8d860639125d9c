"""Installing the project is quiet: its metadata uses the current pyproject form, so setuptools
prints no deprecation warning (the license as an SPDX string, not a TOML table)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_string_and_the_build_backend_understands_it() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(data["project"]["license"], str)
    # SPDX strings need setuptools 77; an older one fails the build instead of warning.
    requires = data["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=") for r in requires)
    floor = next(r for r in requires if r.startswith("setuptools"))
    assert tuple(int(p) for p in floor.split(">=")[1].split(".")) >= (77,)


def test_building_the_metadata_prints_no_deprecation_warning(tmp_path: Path) -> None:
    """What a user runs (pip builds the metadata in an isolated environment with the newest
    setuptools the floor allows): no ``project.license`` warning."""
    source = tmp_path / "s3db"  # a copy: the build leaves s3db.egg-info beside pyproject.toml
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("s3db_core", "s3db_ws_plugin", "s3db_auth_drivers"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "-v", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0 and "Could not find a version that satisfies" in output:
        pytest.skip("no package index reachable to fetch the build backend")
    assert done.returncode == 0, output[-3000:]
    assert "Would install s3db" in output
    assert "project.license" not in output and "deprecated" not in output.lower(), output[-3000:]
