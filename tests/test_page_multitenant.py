"""The multi-tenant page at ``/`` in real Chromium: a tenant's project board, live, and walled off."""

from __future__ import annotations

import pytest
from browser_helpers import (
    PHONE,
    chromium,
    cut_placeholders,
    header_problems,
    horizontal_overflow,
    pages_for,
    served,
    shoot,
)
from playwright.sync_api import expect

from examples.multitenant.app import create_app


@pytest.fixture(scope="module")
def chromium_browser():
    with chromium() as browser:
        yield browser


def sign_in(page, name: str, tenant: str, role: str = "member") -> None:
    expect(page.locator(".dev-banner")).to_contain_text("DEV ONLY")
    page.fill("#login-name", name)
    page.select_option("#login-tenant", tenant)
    page.select_option("#login-role", role)
    page.click("#login button[type=submit]")
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#tenant")).to_have_text(tenant)


def project(page, name: str):
    return page.locator(".project").filter(has=page.locator("h3", has_text=name))


def test_a_tenant_shares_its_board_and_nobody_else_sees_it(request, chromium_browser):
    with served(create_app) as server, pages_for(request, chromium_browser) as pages:
        ada = pages.new(f"{server.http_url}/")
        bert = pages.new(f"{server.http_url}/", viewport=PHONE)
        cleo = pages.new(f"{server.http_url}/")
        sign_in(ada, "ada", "acme", "admin")
        sign_in(bert, "bert", "acme")
        sign_in(cleo, "cleo", "globex", "admin")

        # Ada adds a project: Bert, same tenant, sees it arrive; Cleo (globex) does not.
        ada.fill("#project-name", "Launch")
        ada.fill("#project-description", "ship v1 to the first customers")
        ada.click("#new-project button[type=submit]")
        expect(project(bert, "Launch")).to_contain_text("ship v1 to the first customers")

        # Bert adds tasks from his phone; Ada checks one off; both see the progress.
        for title in ("Write docs", "Fix the login bug"):
            project(bert, "Launch").locator(".add-task input").fill(title)
            project(bert, "Launch").locator(".add-task button").click()
        expect(project(ada, "Launch").locator(".task .title")).to_have_text(["Write docs", "Fix the login bug"])
        project(ada, "Launch").locator(".task", has_text="Write docs").locator("input[type=checkbox]").check()
        for page in (ada, bert):
            expect(project(page, "Launch").locator(".task.done .title")).to_have_text(["Write docs"])
            expect(project(page, "Launch").locator(".progress-text")).to_have_text("1 of 2 done")

        # Only admins delete: Bert has no delete buttons; Ada's delete reaches Bert's board.
        expect(bert.locator(".delete")).to_have_count(0)
        project(ada, "Launch").locator(".task", has_text="Fix the login bug").locator(".delete").click()
        expect(project(bert, "Launch").locator(".task")).to_have_count(1)

        # Globex's board is its own, both ways.
        cleo.fill("#project-name", "Globex secret plan")
        cleo.click("#new-project button[type=submit]")
        expect(cleo.locator(".project h3")).to_have_count(1)
        expect(cleo.locator(".project")).to_contain_text("Globex secret plan")
        ada.fill("#project-name", "Barrier")
        ada.click("#new-project button[type=submit]")
        expect(bert.locator(".project h3")).to_have_count(2)  # Launch and Barrier, never Globex's
        assert "Globex" not in bert.locator("#board").inner_text()
        assert "Launch" not in cleo.locator("#board").inner_text()
        shoot(ada, "multitenant-desktop")
        shoot(bert, "multitenant-phone")
        assert horizontal_overflow(bert) == 0
        assert header_problems(bert) == []  # as on every page: who is signed in, then Sign out at the right
        assert cut_placeholders(bert) == [] and cut_placeholders(ada) == []
        assert pages.errors() == []
