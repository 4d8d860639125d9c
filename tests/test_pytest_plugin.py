"""The pytest plugin, used exactly the way the README tells users to test their guards.

The code between the markers is the README's example, verbatim; the pytester test runs the
README's block itself in a fresh project, as a user's test suite, and checks it catches a
broken guard.
"""

# -- the README example, verbatim ----------------------------------------------------------------
import pytest
import pytest_asyncio

from s3db_ws_plugin.client import Forbidden

pytestmark = pytest.mark.asyncio  # or asyncio_mode = "auto" in your pytest configuration


def only_the_author_edits(user, ctx):
    return ctx.record is None or ctx.record["author"] == user.id


@pytest_asyncio.fixture
async def s3db_database(s3db_database):
    await s3db_database.create_resource("notes", {"title": "string", "author": "string"})
    return s3db_database


@pytest.fixture
def s3db_plugin_config():
    return {"resources": {"notes": {"guard": {"update": only_the_author_edits}}}}


async def test_only_the_author_edits(s3db_connect, s3db_token):
    alice = await s3db_connect(token=s3db_token("alice"))
    bob = await s3db_connect(token=s3db_token("bob"))
    note = await alice.insert("notes", {"title": "mine", "author": "alice"})
    with pytest.raises(Forbidden):
        await bob.update("notes", note["id"], {"title": "bob's now"})
    edited = await alice.update("notes", note["id"], {"title": "still mine"})
    assert edited["title"] == "still mine"


async def test_subscribers_see_new_notes(s3db_client, s3db_database):
    async with s3db_client.subscribe("notes") as sub:
        await s3db_database.resources.notes.insert({"title": "hi", "author": "carol"})
        event = await sub.next(timeout=2)
    assert (event.event, event.data["title"]) == ("insert", "hi")


# -- end of the README example -------------------------------------------------------------------

import re  # noqa: E402
from pathlib import Path  # noqa: E402

pytest_plugins = ["pytester"]
README = Path(__file__).resolve().parent.parent / "README.md"
# pytest-asyncio's default (strict) mode: the README's marks are all the example needs.
INI = """[pytest]
asyncio_default_fixture_loop_scope = function
"""


def readme_example() -> str:
    section = README.read_text().split("### Testing your app with the pytest plugin", 1)[1]
    return re.search(r"```python[^\n]*\n(.*?)```", section, re.S).group(1)


def test_this_file_is_the_readme_example():
    assert readme_example() in Path(__file__).read_text()


def test_the_readme_example_runs_as_a_user_suite_and_catches_a_broken_guard(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_notes=readme_example())
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)

    broken = readme_example().replace(
        'return ctx.record is None or ctx.record["author"] == user.id', "return True"
    )
    assert broken != readme_example()
    pytester.makepyfile(test_notes=broken)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_only_the_author_edits*", "*DID NOT RAISE*Forbidden*"])


async def test_fixtures_start_a_server_per_test_and_clean_up(
    s3db_server, s3db_plugin_factory, s3db_database, s3db_connect
):
    other = await s3db_plugin_factory(s3db_database, resources={"notes": {"events": ["delete"]}})
    assert other.port != s3db_server.port and other.url.startswith("ws://127.0.0.1:")
    anonymous = await s3db_connect()
    assert anonymous.user is None and await anonymous.ping()


async def test_client_factory_connects_to_a_plugin_with_its_own_config(
    s3db_plugin_factory, s3db_client_factory, s3db_database, s3db_token
):
    admins = await s3db_plugin_factory(s3db_database, resources={"notes": {"auth": ["admin"]}})
    root = await s3db_client_factory(admins, s3db_token("root", role="admin"))
    user = await s3db_client_factory(admins, s3db_token("bob"))
    assert (await root.insert("notes", {"title": "t", "author": "root"}))["author"] == "root"
    with pytest.raises(Forbidden):
        await user.list("notes")
