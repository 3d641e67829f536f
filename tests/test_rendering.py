"""Rendering model output: sanitising, highlighting, and block-by-block streaming."""

from __future__ import annotations

import random
import time
from html.parser import HTMLParser

import pytest

from chat.rendering import (
    IncrementalMarkdown,
    pygments_css,
    render_block,
    render_markdown,
    render_plain,
    split_blocks,
)

ALLOWED_TAGS = {
    "a",
    "blockquote",
    "br",
    "button",
    "code",
    "del",
    "div",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "li",
    "ol",
    "p",
    "pre",
    "s",
    "span",
    "strong",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
}


class TagCollector(HTMLParser):
    """Collects every start tag with its attributes, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse_tags(markup: str) -> list[tuple[str, dict[str, str | None]]]:
    collector = TagCollector()
    collector.feed(markup)
    collector.close()
    return collector.tags


def assert_inert(markup: str) -> None:
    lowered = markup.lower()
    assert "<script" not in lowered
    assert "<img" not in lowered
    assert "<svg" not in lowered
    assert "<iframe" not in lowered
    assert "<style" not in lowered
    for tag, attrs in parse_tags(markup):
        assert tag in ALLOWED_TAGS, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name not in {"style", "src", "srcdoc", "formaction", "id"}, (tag, name)
            assert "javascript:" not in (value or "").lower(), (tag, name, value)
        href = attrs.get("href")
        if href is not None:
            assert href.startswith(("http://", "https://", "mailto:")), href
        if tag == "a":
            assert attrs.get("rel") == "noopener noreferrer nofollow"
            assert "target" not in attrs


XSS_CORPUS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](  javascript:alert(1) )",
    "[x](javascript:alert(1) 'title')",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](vbscript:msgbox(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](&#x6A;avascript&#58;alert(1))",
    "[x](java&#x09;script:alert(1))",
    "[x](/relative/path)",
    "![x](javascript:alert(1))",
    "![x](data:image/png;base64,iVBORw0KGgo=)",
    '![x](https://evil.example/x.png "a\\" onerror=\\"alert(1)")',
    "<javascript:alert(1)>",
    "<JAVASCRIPT:alert(1)>",
    '<https://example.com/" onmouseover="alert(1)>',
    '<a href="javascript:alert(1)">x</a>',
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<iframe src="javascript:alert(1)"></iframe>',
    "<style>body { display: none }</style>",
    "<!-- <script>alert(1)</script> -->",
    '[x](https://example.com "\\" onmouseover=alert(1) x=\\"")',
    "[<img src=x onerror=alert(1)>](https://example.com)",
    "[x]: javascript:alert(1)\n\n[x]",
    "[x]: javascript:alert(1)\n[x]",
    "`<script>alert(1)</script>`",
    '```"><img src=x onerror=alert(1)>\ncode\n```',
    "```python onload=alert(1)\nx = 1\n```",
    "~~~ <script>\n</script>\n~~~",
    "    <script>alert(1)</script>",
    "| <script> | b |\n|---|---|\n| <img src=x onerror=1> | [x](javascript:1) |",
    "> <img src=x onerror=alert(1)>\n> [x](javascript:alert(1))",
    "- <svg/onload=alert(1)>\n- [x](javascript:alert(1))",
    "<details open ontoggle=alert(1)>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
]


@pytest.mark.parametrize("payload", XSS_CORPUS)
def test_hostile_markdown_renders_inert(payload: str) -> None:
    assert_inert(render_markdown(payload))
    assert_inert(render_block(payload))


@pytest.mark.parametrize("payload", XSS_CORPUS)
def test_hostile_markdown_streamed_in_single_characters_renders_inert(payload: str) -> None:
    markdown = IncrementalMarkdown()
    blocks = [html for char in payload for html in markdown.feed(char)]
    blocks += markdown.finish()
    assert_inert("".join(blocks))


def test_raw_html_appears_as_visible_text() -> None:
    rendered = render_block("<img src=x onerror=alert(1)> and <b>bold</b>")
    assert "&lt;img src=x onerror=alert(1)&gt;" in rendered
    assert "&lt;b&gt;bold&lt;/b&gt;" in rendered


def test_javascript_link_is_not_a_link() -> None:
    rendered = render_block("[click](javascript:alert(1))")
    assert "<a" not in rendered
    assert "click" in rendered


def test_http_link_keeps_href_and_gets_rel() -> None:
    rendered = render_block('[docs](https://example.com/a?b=1&c=2 "Docs")')
    assert rendered == (
        '<p><a href="https://example.com/a?b=1&amp;c=2" title="Docs" '
        'rel="noopener noreferrer nofollow">docs</a></p>\n'
    )


def test_relative_link_loses_its_href() -> None:
    assert "href" not in render_block("[logout](/accounts/logout/)")


def test_image_becomes_a_link_so_the_browser_loads_nothing_by_itself() -> None:
    rendered = render_block("![a cat](https://example.com/cat.png)")
    assert rendered == (
        '<p><a href="https://example.com/cat.png" rel="noopener noreferrer nofollow">'
        "a cat</a></p>\n"
    )


def test_fenced_code_is_highlighted_with_a_copy_button() -> None:
    rendered = render_block("```python\ndef answer():\n    return '<42>'\n```\n")
    assert rendered.startswith(
        '<div class="code-block">'
        '<button type="button" class="copy-code" aria-label="Copy code">Copy</button>'
        '<pre><code class="language-python">'
    )
    assert '<span class="tok-k">def</span>' in rendered
    assert '<span class="tok-nf">answer</span>' in rendered
    assert "&lt;42&gt;" in rendered
    assert rendered.endswith("</code></pre></div>\n")


def test_fence_without_language_is_escaped_plain_code() -> None:
    rendered = render_block("```\nif a < b:\n    pass\n```\n")
    assert "<pre><code>if a &lt; b:\n    pass\n</code></pre>" in rendered
    assert 'class="copy-code"' in rendered
    assert "tok-" not in rendered


def test_fence_with_unknown_language_keeps_the_class_but_is_not_highlighted() -> None:
    rendered = render_block("~~~nosuchlanguage extra words\nx = 1\n~~~\n")
    assert '<code class="language-nosuchlanguage">x = 1\n</code>' in rendered


def test_fence_language_with_odd_characters_gets_no_class() -> None:
    rendered = render_block('```py"thon\nx\n```\n')
    assert "<pre><code>x\n</code></pre>" in rendered


def test_indented_code_gets_a_copy_button() -> None:
    rendered = render_block("    print('hi')\n")
    assert 'class="copy-code"' in rendered
    assert "<pre><code>print('hi')\n</code></pre>" in rendered


def test_tables_render_with_alignment_classes_instead_of_styles() -> None:
    rendered = render_block("| left | mid | right |\n|:--|:-:|--:|\n| 1 | 2 | 3 |\n")
    assert "<table>" in rendered
    assert '<th class="align-left">left</th>' in rendered
    assert '<th class="align-center">mid</th>' in rendered
    assert '<td class="align-right">3</td>' in rendered
    assert "style" not in rendered


def test_strikethrough_renders() -> None:
    assert render_block("~~gone~~") == "<p><s>gone</s></p>\n"


def test_pygments_css_styles_token_classes_for_light_and_dark_schemes() -> None:
    css = pygments_css()
    assert ".code-block .tok-k {" in css
    assert "@media (prefers-color-scheme: dark) {" in css
    light, dark = css.split("@media (prefers-color-scheme: dark)")
    assert ".code-block .tok-k" in light
    assert ".code-block .tok-k" in dark
    # Only scoped rules: nothing that restyles the rest of the page.
    for line in css.splitlines():
        assert line.startswith((".code-block", "@media", "}")), line


def test_render_plain_escapes_everything() -> None:
    assert render_plain("<b>&\"'</b>") == "&lt;b&gt;&amp;&quot;&#x27;&lt;/b&gt;"


def test_paragraphs_split_at_blank_lines() -> None:
    assert split_blocks("one\n\ntwo\n\nthr") == (["one\n\n", "two\n\n"], "thr")


def test_block_is_not_finished_until_the_next_block_starts() -> None:
    assert split_blocks("one\n\n") == ([], "one\n\n")
    assert split_blocks("one\n\n  ") == ([], "one\n\n  ")
    assert split_blocks("one\n\nt") == (["one\n\n"], "t")


def test_fenced_code_with_blank_lines_is_not_split() -> None:
    text = "```python\na = 1\n\n\nb = 2\n```\nafter"
    assert split_blocks(text) == (["```python\na = 1\n\n\nb = 2\n```\n"], "after")


def test_open_fence_stays_in_the_tail() -> None:
    text = "intro\n\n~~~\ncode\n\nmore\n```\nstill code\n\n"
    assert split_blocks(text) == (["intro\n\n"], "~~~\ncode\n\nmore\n```\nstill code\n\n")


def test_fence_closes_only_with_the_same_character_and_at_least_its_length() -> None:
    text = "````\n```\n\nx\n~~~~\n\ny\n`````\nz"
    assert split_blocks(text) == (["````\n```\n\nx\n~~~~\n\ny\n`````\n"], "z")


def test_closing_fence_finishes_its_block_once_its_line_is_complete() -> None:
    assert split_blocks("```\nx\n```") == ([], "```\nx\n```")
    assert split_blocks("```\nx\n```\n") == (["```\nx\n```\n"], "")


def test_inline_code_with_three_backticks_does_not_open_a_fence() -> None:
    assert split_blocks("```code``` inline\n\nnext") == (["```code``` inline\n\n"], "next")


def test_indented_lines_after_a_blank_line_continue_the_block() -> None:
    text = "- item\n\n  continued\n\n      code in item\n\nafter"
    assert split_blocks(text) == (["- item\n\n  continued\n\n      code in item\n\n"], "after")


def test_fence_indented_under_a_list_item_is_never_split() -> None:
    text = "- item\n\n  ```\n  a\n\nb\n  ```\n\nafter"
    blocks, tail = split_blocks(text)
    assert blocks == ["- item\n\n  ```\n  a\n\nb\n  ```\n\n"]
    assert tail == "after"


def test_blocks_and_tail_reconstruct_the_text_exactly() -> None:
    for text in SAMPLE_DOCUMENTS:
        blocks, tail = split_blocks(text)
        assert "".join(blocks) + tail == text


def test_render_markdown_renders_block_by_block() -> None:
    text = "# Title\n\nSome *text*.\n\n```sh\nls\n```\nTail"
    blocks, tail = split_blocks(text)
    assert render_markdown(text) == "".join(render_block(b) for b in [*blocks, tail])
    assert render_markdown(text).startswith("<h1>Title</h1>\n<p>Some <em>text</em>.</p>\n")


SAMPLE_DOCUMENTS = [
    "",
    "Just one line without a newline",
    "# Heading\n\nA paragraph with **bold**, `code` and a [link](https://example.com).\n\n"
    "Second paragraph\nwith two lines.\n\n\n\nThird after many blanks.\n",
    "Intro:\n\n```python\ndef f(x):\n\n    return x * 2\n\n\n# done\n```\nText right after.\n\n"
    "~~~\n```\nnot closed by backticks\n\n~~~\n\nEnd",
    "1. first\n\n   more of first\n\n2. second\n   - nested\n\n     nested para\n\n"
    "3. third\n\n> quote\n> more\n\n> another quote\n\n---\n\nSetext\n======\n",
    "| a | b |\n|---|--:|\n| 1 | 2 |\n| 3 | 4 |\n\nAfter the table.\n\n"
    "    indented code\n\n    still indented\n\nprose\n",
    "Windows lines\r\n\r\nsecond\r\n```\r\ncode\r\n\r\n```\r\n\r\nend\r\n",
    "[ref]: https://example.com\n\nUses [ref].\n\n<script>alert(1)</script>\n\n"
    "[x](javascript:alert(1))\n\n```\nunclosed fence at the end\n\nstill code",
    "   ```js\n   let a = 1;\n\n   ```\n\n ~~~\n  x\n\n ~~~\n\n```inline``` code\n\ntrailing\n\n\n",
    "- a\n- b\n\n- c\n\n  ```\n  in list\n\n  ```\n\nplain\n\n\t tabbed\n\n\ttab code\n\nz",
]


def random_deltas(text: str, rng: random.Random) -> list[str]:
    deltas = []
    position = 0
    while position < len(text):
        size = rng.choice([0, 1, 1, 2, 3, 5, 8, 20, 60])
        deltas.append(text[position : position + size])
        position += size
    return deltas


def stream(deltas: list[str], markdown: IncrementalMarkdown) -> list[str]:
    blocks: list[str] = []
    for delta in deltas:
        blocks += markdown.feed(delta)
    return blocks + markdown.finish()


@pytest.mark.parametrize("seed", range(25))
def test_any_split_into_deltas_renders_like_the_whole_text(seed: int) -> None:
    rng = random.Random(seed)
    for text in SAMPLE_DOCUMENTS:
        deltas = random_deltas(text, rng)
        assert "".join(stream(deltas, IncrementalMarkdown())) == render_markdown(text)


@pytest.mark.parametrize("seed", range(25))
def test_any_split_into_deltas_finds_the_same_blocks_and_a_growing_tail(seed: int) -> None:
    rng = random.Random(seed)
    for text in SAMPLE_DOCUMENTS:
        blocks, tail = split_blocks(text)
        raw = IncrementalMarkdown(render=lambda block: block)
        streamed: list[str] = []
        for delta in random_deltas(text, rng):
            tail_before = raw.tail
            finished = raw.feed(delta)
            if not finished:
                assert raw.tail == tail_before + delta
            streamed += finished
            assert "".join(streamed) + raw.tail == raw.text
        assert streamed == blocks
        assert raw.tail == tail
        assert raw.text == text


def test_tail_grows_by_the_delta_until_a_block_finishes() -> None:
    markdown = IncrementalMarkdown()
    assert markdown.feed("Hello") == []
    assert markdown.feed(" world\n") == []
    assert markdown.feed("\n") == []
    assert markdown.tail == "Hello world\n\n"
    assert markdown.feed("Next") == ["<p>Hello world</p>\n"]
    assert markdown.tail == "Next"


def test_each_finished_block_is_returned_exactly_once() -> None:
    markdown = IncrementalMarkdown()
    assert markdown.feed("a\n\nb\n\nc\n\n") == ["<p>a</p>\n", "<p>b</p>\n"]
    assert markdown.feed("d") == ["<p>c</p>\n"]
    assert markdown.feed("\n") == []
    assert markdown.finish() == ["<p>d</p>\n"]
    assert markdown.tail == ""
    assert markdown.text == "a\n\nb\n\nc\n\nd\n"


def test_finish_with_nothing_left_returns_nothing() -> None:
    markdown = IncrementalMarkdown()
    markdown.feed("```\nx\n```\n")
    assert markdown.finish() == []
    assert markdown.finish() == []


def test_feed_after_finish_is_an_error() -> None:
    markdown = IncrementalMarkdown()
    markdown.finish()
    with pytest.raises(RuntimeError):
        markdown.feed("late")


LONG_FUNCTION = """
def summarise(conversation, *, limit=20):
    \"\"\"Summarise the last messages of a conversation.\"\"\"
    messages = [m for m in conversation.messages if m.role != "system"][-limit:]

    lines = []
    for message in messages:
        text = message.text.strip().replace("\\n", " ")
        lines.append(f"{message.role}: {text[:200]}")
    return "\\n".join(lines)
"""


def big_document(size: int) -> str:
    parts = []
    total = 0
    index = 0
    while total < size:
        part = SAMPLE_DOCUMENTS[index % len(SAMPLE_DOCUMENTS)] + "\n\n"
        # A few long code blocks among the short ones.
        if index % 7 == 0:
            part = "```python\n" + LONG_FUNCTION * 10 + "```\n\n"
        parts.append(part)
        total += len(part)
        index += 1
    return "".join(parts)


def test_streaming_renders_each_character_once() -> None:
    text = big_document(200_000)
    rendered_chars = 0

    def counting_render(block: str) -> str:
        nonlocal rendered_chars
        rendered_chars += len(block)
        return block

    markdown = IncrementalMarkdown(render=counting_render)
    blocks = stream([text[i : i + 20] for i in range(0, len(text), 20)], markdown)
    assert rendered_chars == len(text)
    assert len(blocks) > 100


def test_streaming_a_long_answer_in_small_deltas_is_fast() -> None:
    text = big_document(200_000)
    started = time.perf_counter()
    blocks = stream([text[i : i + 20] for i in range(0, len(text), 20)], IncrementalMarkdown())
    elapsed = time.perf_counter() - started
    assert len(blocks) > 100
    # Loose on purpose (about a second here, mostly highlighting): re-rendering the text on
    # every delta would take hours.
    assert elapsed < 5
