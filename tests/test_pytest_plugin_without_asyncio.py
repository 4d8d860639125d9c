"""Installing s3db must not break the pytest sessions of an environment without pytest-asyncio:
pytest loads the ``s3db`` plugin (entry point ``pytest11``) in every session. The sync fixtures
work; an async one fails only the test that asks for it, saying what to install.

Each session runs in a subprocess whose import system cannot find ``pytest_asyncio`` (a meta
path finder refuses it; ``--assert=plain`` keeps pytest's assertion rewriter, which finds the
modules of every pytest plugin distribution by itself, out of the way) and where its pytest
plugin is not loaded, as in an environment where it was never installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

RUN_WITHOUT_PYTEST_ASYNCIO = textwrap.dedent(
    """
    import sys

    class HidePytestAsyncio:
        def find_spec(self, name, path=None, target=None):
            if name == "pytest_asyncio" or name.startswith("pytest_asyncio."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, HidePytestAsyncio())
    import pytest

    args = ["--assert=plain", "-p", "no:asyncio", "-p", "no:cacheprovider", *sys.argv[1:]]
    sys.exit(pytest.main(args))
    """
)

USER_TESTS = textwrap.dedent(
    """
    import jwt


    def test_an_unrelated_sync_test():
        assert 1 + 1 == 2


    def test_the_sync_fixtures_work(s3db_token, s3db_jwt_secret):
        claims = jwt.decode(s3db_token("alice"), s3db_jwt_secret, algorithms=["HS256"])
        assert claims["sub"] == "alice"


    def test_an_async_fixture_says_what_to_install(s3db_database):
        pass
    """
)


def run_pytest_without_asyncio(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_PYTEST_ASYNCIO, "-rA", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_plugin_loads_with_nothing_but_pytest(tmp_path):
    result = run_pytest_without_asyncio(tmp_path)
    out = result.stdout + result.stderr
    assert "2 passed, 1 error" in out, out
    assert "PASSED test_user.py::test_an_unrelated_sync_test" in out
    assert "PASSED test_user.py::test_the_sync_fixtures_work" in out
    assert "ERROR test_user.py::test_an_async_fixture_says_what_to_install" in out
    assert "'s3db_database' is async and needs pytest-asyncio: pip install pytest-asyncio" in out
    assert "pytest_asyncio" not in out.replace("pytest-asyncio", "")  # no traceback into it


def test_the_blocker_really_hides_pytest_asyncio(tmp_path):
    """The subprocess above is only a proof if pytest_asyncio is unimportable in it."""
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n"
        "def test_probe():\n"
        "    with pytest.raises(ModuleNotFoundError):\n"
        "        import pytest_asyncio  # noqa: F401\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_WITHOUT_PYTEST_ASYNCIO,
            "-p",
            "no:s3db",
            str(tmp_path / "test_probe.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
