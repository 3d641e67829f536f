"""Tool calls as a person sees them: live cards in the thinking panel, run by a real worker.

The offline model calls the tools named in the message (`!tool:NAME:{json}`); a Celery worker on
the embedded filesystem broker runs them against the browser test database. Every wait is on an
event in the page, never a sleep. Screenshots land in var/screenshots/tools-*.png.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from chat.models import Conversation, ToolCall, ToolCallStatus, ToolSetting
from tests.browser.test_chat_browser import db_message, log_in, send, wait_finished, wait_until

pytestmark = pytest.mark.browser

# Fast model steps: the tools, not the model, are what these tests watch.
FAST = "!rate:200 !think:12 !words:30"


def python_call(code: str) -> str:
    return "!tool:python:" + json.dumps({"code": code})


def echo_call(text: str) -> str:
    return "!tool:echo:" + json.dumps({"text": text})


@pytest.fixture
def echo_on(transactional_db: None) -> None:
    ToolSetting.objects.update_or_create(name="echo", defaults={"enabled": True})


def cards(page: Page, short: str) -> Locator:
    """The tool cards of one assistant message: always inside its thinking panel."""
    return page.locator(f"#m-{short} details.thinking .steps .tool-card")


def open_thinking(page: Page, short: str) -> None:
    """Unfold the thinking panel (it folds itself once the answer starts)."""
    details = page.locator(f"#m-{short} details.thinking")
    if not details.evaluate("el => el.open"):
        details.locator("> summary").click()
    expect(details).to_have_attribute("open", "")


def open_card(card: Locator) -> None:
    if not card.locator("details").evaluate("el => el.open"):
        card.locator("summary").click()
    expect(card.locator(".tool-body")).to_be_visible()


def no_sideways_scrolling(page: Page, width: int) -> None:
    widths = page.evaluate(
        "() => ({page: document.documentElement.scrollWidth,"
        " log: document.getElementById('log').scrollWidth,"
        " logClient: document.getElementById('log').clientWidth})"
    )
    assert widths["page"] <= width, widths
    assert widths["log"] <= widths["logClient"], widths


def test_a_running_tool_shows_a_ticking_card_then_its_result(
    page: Page, worker: subprocess.Popen[bytes], screenshots: Path
) -> None:
    log_in(page)
    code = "import time\ntime.sleep(3)\nprint(6*7)"
    short = send(page, f"What is six times seven? {python_call(code)} {FAST}")
    card = cards(page, short).first
    expect(card).to_be_visible()  # inside the open thinking panel, while the loop runs
    expect(card.locator(".tool-name")).to_have_text("python")
    expect(card.locator(".tool-args")).to_contain_text("time.sleep(3)")

    # Running, with a clock that ticks from the worker's start time.
    expect(card).to_have_class(re.compile(r"\bstatus-running\b"))
    clock = card.locator(".tool-status [data-clock]")
    expect(clock).to_have_text(re.compile(r"^\d+ s$"))
    expect(card.locator(".tool-status")).to_contain_text("running")
    first = clock.inner_text()
    page.wait_for_function(
        "([selector, first]) => {"
        "  const el = document.querySelector(selector);"
        "  return el !== null && /^\\d+ s$/.test(el.textContent) && el.textContent !== first;"
        "}",
        arg=[f"#{card.get_attribute('id')} .tool-status [data-clock]", first],
        polling=50,
    )
    page.screenshot(path=screenshots / "tools-01-running.png")
    # Opened while it runs, the card shows its arguments; no result yet.
    open_card(card)
    expect(card.locator(".tool-label")).to_have_text(["Arguments"])
    expect(card.locator(".tool-body pre.tool-pre")).to_contain_text("code:\nimport time")
    page.screenshot(path=screenshots / "tools-01b-running-open.png")

    # Done: the card says so (and stays open), the loop goes on, the answer uses the result.
    expect(card).to_have_class(re.compile(r"\bstatus-done\b"), timeout=30_000)
    expect(card.locator(".tool-status")).to_have_text(re.compile(r"^done · \d+ s$"))
    assert card.locator("details").evaluate("el => el.open"), "the finished card stays open"
    wait_finished(page, short)
    answer = page.locator(f"#m-{short} .answer")
    expect(answer).to_contain_text("Tool results")
    expect(answer).to_contain_text("42")
    open_thinking(page, short)
    expect(card.locator(".tool-body")).to_be_visible()
    result = card.locator(".tool-result pre.tool-pre")
    expect(result).to_contain_text("stdout:\n42")
    expect(card.locator(".tool-label")).to_have_text(["Arguments", "Result"])
    page.screenshot(path=screenshots / "tools-02-done.png")

    # After a reload the card is rendered from the database, with the same result.
    page.reload()
    expect(cards(page, short)).to_have_count(1)
    card = cards(page, short).first
    expect(card).to_have_class(re.compile(r"\bstatus-done\b"))
    open_thinking(page, short)
    open_card(card)
    expect(card.locator(".tool-result pre.tool-pre")).to_contain_text("stdout:\n42")
    (call,) = ToolCall.objects.filter(message=db_message(short))
    assert call.status == ToolCallStatus.DONE
    assert call.worker, "a worker ran it"


def test_parallel_calls_show_one_card_each(
    page: Page, worker: subprocess.Popen[bytes], echo_on: None, screenshots: Path
) -> None:
    log_in(page)
    short = send(page, f"Echo twice {echo_call('alpha')} {echo_call('beta')} {FAST}")
    wait_finished(page, short)
    both = cards(page, short)
    expect(both).to_have_count(2)
    expect(both.locator(".tool-name")).to_have_text(["echo", "echo"])
    expect(both.locator(".tool-args")).to_have_text([re.compile("alpha"), re.compile("beta")])
    for card in both.all():
        expect(card).to_have_class(re.compile(r"\bstatus-done\b"))
    open_thinking(page, short)
    open_card(both.nth(1))
    expect(both.nth(1).locator(".tool-result pre.tool-pre")).to_have_text("beta")
    page.screenshot(path=screenshots / "tools-03-parallel.png")
    calls = ToolCall.objects.filter(message=db_message(short)).order_by("index")
    assert [(c.status, c.result) for c in calls] == [("done", "alpha"), ("done", "beta")]


def test_the_tools_menu_switches_tools_per_conversation(
    page: Page, user: Any, echo_on: None, screenshots: Path
) -> None:
    conversation = Conversation.objects.create(owner=user, title="Tool choices")
    log_in(page)
    page.goto(f"/c/{conversation.id}/")
    menu = page.locator("header.topbar #tools-menu")
    menu.locator("summary").click()
    choices = menu.locator("label.tool-choice")
    expect(choices.locator("strong")).to_have_text(
        ["python", "fetch_url", "web_search", "recall", "echo"]
    )
    echo = menu.locator("input[value=echo]")
    expect(echo).to_be_checked()
    expect(echo).to_be_enabled()
    # A tool this machine cannot offer says why, and cannot be switched on.
    search = menu.locator("label.tool-choice", has=page.locator("input[value=web_search]"))
    expect(search).to_have_class(re.compile(r"\bunavailable\b"))
    expect(search.locator("input")).to_be_disabled()
    expect(search).to_contain_text("no web search backend is configured")
    page.screenshot(path=screenshots / "tools-04-menu.png")

    echo.uncheck()  # saved at once by htmx; the menu comes back from the server

    def saved() -> bool:
        conversation.refresh_from_db()
        return "echo" in conversation.disabled_tools

    wait_until(saved)
    expect(page.locator("#tools-menu input[value=echo]")).not_to_be_checked()
    # The menu stays open for the next change, and keeps the keyboard focus where it was.
    expect(page.locator("#tools-menu")).to_have_attribute("open", "")
    expect(page.locator("#tools-menu input[value=echo]")).to_be_focused()
    expect(page.locator("#tools-menu form")).to_be_visible()

    page.reload()
    page.locator("#tools-menu summary").click()
    expect(page.locator("#tools-menu input[value=echo]")).not_to_be_checked()
    expect(page.locator("#tools-menu input[value=python]")).to_be_checked()


@pytest.mark.parametrize("viewport", [{"width": 375, "height": 740}])
def test_a_large_result_is_cut_short_with_a_show_all_link(
    page: Page, worker: subprocess.Popen[bytes], screenshots: Path
) -> None:
    log_in(page)
    code = "for i in range(500):\n    print(f'line {i:04d} abcdefghij')\nprint('z' * 200)"
    short = send(page, f"Print a lot {python_call(code)} {FAST}")
    card = cards(page, short).first
    expect(card).to_have_class(re.compile(r"\bstatus-done\b"), timeout=30_000)
    wait_finished(page, short)
    open_thinking(page, short)
    open_card(card)
    result = card.locator(".tool-result pre.tool-pre")
    shown = result.inner_text()
    assert "line 0000" in shown
    assert "line 0499" not in shown
    assert len(shown) <= 4000
    link = card.locator("a.show-all")
    expect(link).to_have_text(re.compile(r"^Show all \(\d+ characters\)$"))
    no_sideways_scrolling(page, 375)
    link.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "tools-05-phone-truncated.png")

    link.click()
    expect(card.locator("a.show-all")).to_have_count(0)
    full = card.locator(".tool-result pre.tool-pre")
    expect(full).to_contain_text("line 0499 abcdefghij")
    expect(full).to_contain_text("z" * 200)
    (call,) = ToolCall.objects.filter(message=db_message(short))
    assert len(full.inner_text()) >= len(call.result) - 5
    no_sideways_scrolling(page, 375)
    page.screenshot(path=screenshots / "tools-06-phone-show-all.png")

    # The Tools menu opens within the phone's screen.
    page.locator("#tools-menu summary").click()
    box = page.locator("#tools-menu form").bounding_box()
    assert box is not None
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375, box
    page.screenshot(path=screenshots / "tools-07-phone-menu.png")
