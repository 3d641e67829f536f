"""The chat as a person uses it: Chromium against the real app, streaming from the offline model.

Every wait is on an event in the page (a selector, a text, a JavaScript condition), never a
sleep. Screenshots land in var/screenshots/ for a person to look at.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Dialog, Page, Request, WebSocketRoute, expect

from agents.offline_server import split_tokens
from chat.models import Message, MessageStatus
from tests.browser.conftest import PASSWORD, USERNAME, LiveApp

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)> [click](javascript:alert(1)) <script>alert(2)</script>"


def log_in(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/"))
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#composer-text")).to_be_focused()


def send(page: Page, text: str) -> str:
    """Type `text` and press Enter; returns the short id of the assistant message it starts."""
    before = page.locator("article.msg.assistant").count()
    page.fill("#composer-text", text)
    page.press("#composer-text", "Enter")
    expect(page.locator("article.msg.assistant")).to_have_count(before + 1)
    return assistant_id(page, before)


def assistant_id(page: Page, index: int) -> str:
    article = page.locator("article.msg.assistant").nth(index)
    expect(article).to_have_attribute("data-msg", re.compile(r"^[0-9a-f]{12}$"))
    short = article.get_attribute("data-msg")
    assert short is not None
    return short


def wait_finished(page: Page, short: str) -> None:
    """The final frame replaces the footer: no Stop button, a Copy button instead."""
    expect(page.locator(f"#f-{short} .copy-answer")).to_be_attached(timeout=60_000)
    expect(page.locator(f"#f-{short} [data-stop]")).to_have_count(0)


def wait_longer(page: Page, selector: str, length: int) -> None:
    page.wait_for_function(
        "([selector, length]) => document.querySelector(selector).textContent.length > length",
        arg=[selector, length],
    )


def inner_text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text()


def details_open(page: Page, short: str) -> bool:
    is_open: bool = page.eval_on_selector(f"#m-{short} details.thinking", "el => el.open")
    return is_open


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll a condition outside the page (the database), for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        time.sleep(0.02)


def db_message(short: str) -> Message:
    return Message.objects.get(id__startswith=short, role=Message.Role.ASSISTANT)


def test_a_turn_thinks_with_a_ticking_clock_then_folds_and_renders_markdown(
    page: Page, screenshots: Path
) -> None:
    log_in(page)
    page.screenshot(path=screenshots / "01-empty-chat.png")
    short = send(page, "How does binary search work? !think:120")
    expect(page.locator("article.msg.user .bubble")).to_contain_text("How does binary search")
    head = page.locator(f"#h-{short}")

    expect(head).to_have_text(re.compile(r"^Thinking… \d+ s$"))
    assert details_open(page, short)
    # The clock ticks: from the seconds shown now to the next, without a step back on the way.
    first = int(head.inner_text().split()[1])
    page.wait_for_function(
        "([selector, first]) => {"
        "  const [word, seconds] = document.querySelector(selector).textContent.split(' ');"
        "  if (Number(seconds) < first) throw new Error('the clock went back');"
        "  return word === 'Thinking…' && Number(seconds) > first;"
        "}",
        arg=[f"#h-{short}", first],
        polling=50,
    )
    reasoning = f"#r-{short}-0"
    shown = len(page.locator(reasoning).text_content() or "")
    wait_longer(page, reasoning, shown)
    page.screenshot(path=screenshots / "02-thinking.png")

    # The answer starts: the panel folds away and the clock stops.
    page.wait_for_function(
        "selector => !document.querySelector(selector).open", arg=f"#m-{short} details.thinking"
    )
    expect(head).to_have_text(re.compile(r"^Thought for \d+ s$"))
    wait_longer(page, f"#m-{short} .answer", 0)
    page.screenshot(path=screenshots / "03-answering.png")

    wait_finished(page, short)
    answer = page.locator(f"#m-{short} .answer")
    expect(answer.locator("h2")).to_have_count(1)
    expect(answer.locator("ul > li")).to_have_count(3)
    code = answer.locator(".code-block")
    expect(code.locator("button.copy-code")).to_be_visible()
    expect(code.locator("pre code.language-python")).to_be_visible()
    assert code.locator("span[class^='tok-']").count() > 3
    page.screenshot(path=screenshots / "04-answered.png", full_page=True)
    thought = head.inner_text()
    answer_text = answer.inner_text()
    reasoning_text = page.locator(reasoning).text_content()

    page.reload()
    expect(head).to_have_text(thought)
    assert answer.inner_text() == answer_text
    assert page.locator(reasoning).text_content() == reasoning_text
    assert not details_open(page, short)
    message = db_message(short)
    assert message.status == MessageStatus.COMPLETE
    assert message.steps.get().reasoning == reasoning_text


def test_reloading_mid_answer_loses_and_repeats_nothing(page: Page, screenshots: Path) -> None:
    log_in(page)
    short = send(page, "Tell me about caching !rate:40 !words:300")
    blocks = f"#b-{short}"
    wait_longer(page, blocks, 300)
    seen = inner_text(page, blocks).rstrip()
    page.screenshot(path=screenshots / "05-before-reload.png")

    page.reload()
    expect(page.locator(f"#f-{short} [data-stop]")).to_be_visible()  # still streaming
    page.screenshot(path=screenshots / "06-after-reload.png")
    wait_finished(page, short)
    answer = f"#m-{short} .answer"
    live = inner_text(page, answer)
    live_reasoning = page.locator(f"#r-{short}-0").text_content()
    assert live.startswith(seen)
    assert len(live) > len(seen)

    page.reload()
    expect(page.locator(f"#f-{short} .copy-answer")).to_be_attached()
    assert inner_text(page, answer) == live
    assert page.locator(f"#r-{short}-0").text_content() == live_reasoning
    message = db_message(short)
    assert message.status == MessageStatus.COMPLETE
    # The model sent exactly 300 answer tokens: the stored text has each of them once.
    assert len(split_tokens(message.text)) == 300
    assert message.steps.get().reasoning == live_reasoning


def test_stop_keeps_the_partial_reasoning_and_offers_retry(
    page: Page, live_app: LiveApp, screenshots: Path
) -> None:
    log_in(page)
    disconnects = live_app.model.server.disconnects
    short = send(page, "Think about this forever !hang")
    reasoning = f"#r-{short}-0"
    wait_longer(page, reasoning, 40)

    page.click(f"#f-{short} button[data-stop]")
    footer = page.locator(f"#f-{short}")
    expect(footer.locator(".notice")).to_contain_text("Stopped")
    expect(footer.locator("button.retry")).to_be_visible()
    page.screenshot(path=screenshots / "07-stopped.png")
    kept = page.locator(reasoning).text_content() or ""
    assert len(kept) > 40
    message = db_message(short)
    assert message.status == MessageStatus.STOPPED
    assert message.steps.get().reasoning == kept
    # Stop closed the request to the model, so it stops generating (and billing).
    live_app.model.wait_for_disconnects(disconnects + 1)

    page.reload()
    expect(page.locator(f"#f-{short} .notice")).to_contain_text("Stopped")
    assert page.locator(reasoning).text_content() == kept


def test_a_message_sent_while_the_model_answers_is_refused_in_the_composer(
    page: Page, screenshots: Path
) -> None:
    log_in(page)
    short = send(page, "Take your time !hang")
    expect(page.locator(f"#f-{short} [data-stop]")).to_be_visible()
    page.fill("#composer-text", "And another thing")
    page.press("#composer-text", "Enter")
    expect(page.locator("#composer [role=alert]")).to_contain_text("still answering")
    expect(page.locator("#composer-text")).to_have_value("And another thing")
    page.screenshot(path=screenshots / "08-busy.png")
    expect(page.locator("article.msg.user")).to_have_count(1)
    page.keyboard.press("Escape")  # Esc stops the turn, as the Stop button's title says
    expect(page.locator(f"#f-{short} .notice")).to_contain_text("Stopped")


def test_a_turn_that_ends_before_the_socket_connects_still_shows_its_end(page: Page) -> None:
    live_at_connect: list[bool] = []

    def connect_after_the_turn(ws: WebSocketRoute) -> None:
        # The page (rendered before its socket opens) shows the turn live; the socket joins only
        # after the turn has ended, so it misses every frame, the last one included.
        answers = Message.objects.filter(role=Message.Role.ASSISTANT)
        live_at_connect.append(answers.filter(status=MessageStatus.STREAMING).exists())
        wait_until(lambda: not answers.filter(status=MessageStatus.STREAMING).exists())
        ws.connect_to_server()

    page.route_web_socket(re.compile(r"/ws/c/"), connect_after_the_turn)
    log_in(page)
    short = send(page, "Be quick !rate:20 !think:10 !words:30")
    wait_finished(page, short)
    assert live_at_connect == [True]
    expect(page.locator(f"#m-{short} .answer")).to_contain_text("Be quick")
    expect(page.locator(f"#h-{short}")).to_have_text(re.compile(r"^Thought for \d+ s$"))


def test_markup_in_an_answer_is_shown_as_text_and_never_runs(page: Page, screenshots: Path) -> None:
    dialogs: list[str] = []

    def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    log_in(page)
    short = send(page, f"!rate:200 !echo:{XSS}")
    wait_finished(page, short)

    def assert_inert() -> None:
        answer = page.locator(f"#m-{short} .answer")
        expect(answer).to_contain_text("<img src=x onerror=alert(1)>")
        expect(answer).to_contain_text("[click](javascript:alert(1))")
        expect(answer).to_contain_text("<script>alert(2)</script>")
        expect(page.locator("#log img")).to_have_count(0)
        expect(page.locator("#log script")).to_have_count(0)
        hrefs = page.eval_on_selector_all("#log a", "links => links.map(a => a.href)")
        assert not [href for href in hrefs if href.lower().startswith("javascript:")]
        assert dialogs == []

    assert_inert()
    page.screenshot(path=screenshots / "09-markup-inert.png")
    page.reload()
    expect(page.locator(f"#f-{short} .copy-answer")).to_be_attached()
    assert_inert()


def test_a_provider_error_shows_inline_and_retry_starts_a_new_attempt(
    page: Page, screenshots: Path
) -> None:
    log_in(page)
    # The first request fails for lack of quota (never retried automatically); the next succeeds.
    short = send(page, "Summarise the news !error:quota !fail_times:1 !rate:200")
    alert = page.locator(f"#f-{short} [role=alert]")
    expect(alert).to_contain_text("quota")
    retry = page.locator(f"#f-{short} button.retry")
    expect(retry).to_be_visible()
    page.screenshot(path=screenshots / "10-error.png")

    retry.click()
    expect(page.locator("article.msg.assistant")).to_have_count(2)
    attempt = assistant_id(page, 1)
    assert attempt != short
    wait_finished(page, attempt)
    expect(page.locator(f"#m-{attempt} .answer h2")).to_be_visible()
    expect(page.locator(f"#f-{attempt} [role=alert]")).to_have_count(0)
    expect(alert).to_contain_text("quota")  # the failed attempt stays, as it was
    expect(page.locator("article.msg.user")).to_have_count(1)
    page.screenshot(path=screenshots / "11-retried.png", full_page=True)
    assert db_message(short).status == MessageStatus.FAILED
    assert db_message(attempt).status == MessageStatus.COMPLETE


@pytest.mark.parametrize("viewport", [{"width": 375, "height": 740}])
def test_a_phone_shows_the_answer_without_sideways_scrolling(page: Page, screenshots: Path) -> None:
    log_in(page)
    short = send(page, "Show me a table and some code !rate:0 !think:20 !words:300")
    wait_finished(page, short)
    answer = page.locator(f"#m-{short} .answer")
    expect(answer.locator("table")).to_be_attached()
    widths = page.evaluate(
        "() => ({page: document.documentElement.scrollWidth,"
        " log: document.getElementById('log').scrollWidth,"
        " logClient: document.getElementById('log').clientWidth})"
    )
    assert widths["page"] <= 375
    assert widths["log"] <= widths["logClient"]
    page.screenshot(path=screenshots / "12-phone-end.png")
    page.eval_on_selector("#log", "log => { log.scrollTop = 0; }")
    page.screenshot(path=screenshots / "13-phone-top.png")


def test_an_empty_message_is_never_sent(page: Page, screenshots: Path) -> None:
    log_in(page)
    posts: list[str] = []

    def record(request: Request) -> None:
        if request.method == "POST":
            posts.append(request.url)

    page.on("request", record)
    page.press("#composer-text", "Enter")
    page.fill("#composer-text", "   ")
    page.press("#composer-text", "Enter")

    # Send bypasses the page script: the server answers with the form's error.
    page.click("button.send")
    expect(page.locator("#composer [role=alert]")).to_have_text("Write a message first.")
    expect(page.locator("#composer-text")).to_have_attribute("aria-invalid", "true")
    page.screenshot(path=screenshots / "14-empty-message.png")
    assert len(posts) == 1  # only the click: neither Enter sent anything
    expect(page.locator("article.msg")).to_have_count(0)
    assert not Message.objects.exists()
