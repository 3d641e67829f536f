"""Safe, incremental rendering of model output.

Model answers are untrusted and arrive token by token. A finished Markdown block is rendered to
sanitised HTML once and sent once; the unfinished tail is shown as escaped plain text until its
block finishes, so the bytes sent grow linearly with the answer instead of re-sending a
re-rendered document on every token.

Rendering is a pipeline of three layers, each enough on its own to stop script injection:
markdown-it with raw HTML disabled (HTML in the model text becomes visible text, and
``javascript:``-like links are not parsed as links), our own renderers for code and images, and
finally nh3 with an explicit allow-list of tags, attributes, classes and URL schemes.

Everything here is a pure function of its input: no Django models, no settings.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable, Sequence

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import unescapeAll
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

__all__ = [
    "IncrementalMarkdown",
    "pygments_css",
    "render_block",
    "render_markdown",
    "render_plain",
    "split_blocks",
]

# Pygments token classes get a prefix so they cannot collide with the page's own classes.
TOKEN_CLASS_PREFIX = "tok-"
LIGHT_STYLE = "default"
DARK_STYLE = "github-dark"

# Highlighting runs in the turn runner's event loop at roughly 200 KB/s for Python source; past
# this size a code block is shown unhighlighted so one huge block cannot stall every other
# stream in the process for long.
MAX_HIGHLIGHT_CHARS = 20_000

COPY_BUTTON = '<button type="button" class="copy-code" aria-label="Copy code">Copy</button>'

_FORMATTER = HtmlFormatter(nowrap=True, classprefix=TOKEN_CLASS_PREFIX)

# A language name becomes part of a class attribute; anything unusual is dropped rather than
# escaped so the class stays a plain identifier the page's CSS and script can rely on.
_LANGUAGE_RE = re.compile(r"[A-Za-z0-9_+#.-]{1,40}")

_ALLOWED_TAGS = {
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
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "button": {"type", "aria-label", "class"},
    "code": {"class"},
    "div": {"class"},
    "ol": {"start"},
    "span": {"class"},
    "td": {"class"},
    "th": {"class"},
}
# Which class names each tag may carry; every one of them is produced by this module.
_ALLOWED_CLASSES = {
    "button": re.compile(r"copy-code"),
    "code": re.compile(r"language-[A-Za-z0-9_+#.-]{1,40}"),
    "div": re.compile(r"code-block"),
    "span": re.compile(re.escape(TOKEN_CLASS_PREFIX) + r"[A-Za-z0-9-]{1,20}"),
    "td": re.compile(r"align-(?:left|center|right)"),
    "th": re.compile(r"align-(?:left|center|right)"),
}


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    if attribute != "class":
        return value
    pattern = _ALLOWED_CLASSES.get(tag)
    if pattern is None:
        return None
    kept = [name for name in value.split() if pattern.fullmatch(name)]
    return " ".join(kept) or None


_CLEANER = nh3.Cleaner(
    tags=_ALLOWED_TAGS,
    clean_content_tags=set(),
    attributes=_ALLOWED_ATTRIBUTES,
    attribute_filter=_filter_attribute,
    strip_comments=True,
    link_rel="noopener noreferrer nofollow",
    url_schemes={"http", "https", "mailto"},
    # A relative link in model output would point into Glassbox itself: never useful, and the
    # first step of tricking a user into a same-site request.
    url_relative="deny",
)


@functools.lru_cache(maxsize=128)
def _lexer_for(language: str) -> Lexer | None:
    try:
        # stripnl=False keeps leading blank lines the author wrote inside the fence.
        return get_lexer_by_name(language, stripnl=False)
    except ClassNotFound:
        return None


def _code_block_html(code: str, language: str) -> str:
    lexer = _lexer_for(language.lower()) if language else None
    if lexer is not None and len(code) <= MAX_HIGHLIGHT_CHARS:
        body = highlight(code, lexer, _FORMATTER)
    else:
        body = html.escape(code)
    class_attr = f' class="language-{language}"' if _LANGUAGE_RE.fullmatch(language) else ""
    return (
        f'<div class="code-block">{COPY_BUTTON}<pre><code{class_attr}>{body}</code></pre></div>\n'
    )


def _render_fence(
    renderer: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    token = tokens[idx]
    info = unescapeAll(token.info).strip()
    language = info.split(maxsplit=1)[0] if info else ""
    return _code_block_html(token.content, language)


def _render_indented_code(
    renderer: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    return _code_block_html(tokens[idx].content, "")


def _render_image(
    renderer: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    # Images are shown as links: an image the browser loads by itself is a channel for
    # exfiltration (a prompt-injected model can put conversation text in the URL) and a
    # tracking pixel. A link is only followed when the user chooses to.
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = renderer.renderInlineAsText(token.children or [], options, env)
    return f'<a href="{html.escape(src)}">{html.escape(alt or src)}</a>'


def _alignment_classes(state: StateCore) -> None:
    # The table plugin aligns cells with inline style attributes; a class keeps style attributes
    # off the allow-list entirely and works under a strict Content-Security-Policy.
    for token in state.tokens:
        if token.type not in ("th_open", "td_open"):
            continue
        style = token.attrs.pop("style", None)
        if isinstance(style, str) and style.startswith("text-align:"):
            token.attrSet("class", "align-" + style.removeprefix("text-align:"))


def _make_markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    md.add_render_rule("fence", _render_fence)
    md.add_render_rule("code_block", _render_indented_code)
    md.add_render_rule("image", _render_image)
    md.core.ruler.push("alignment_classes", _alignment_classes)
    return md


_MARKDOWN = _make_markdown()


def render_block(markdown_text: str) -> str:
    """Render Markdown from the model to sanitised HTML.

    Raw HTML comes out as visible text, links keep only http(s) and mailto targets and get
    ``rel="noopener noreferrer nofollow"``, images become links, and fenced code is highlighted
    (``tok-`` classes, see :func:`pygments_css`) inside ``<div class="code-block">`` with a copy
    button the page script wires up.
    """
    return _CLEANER.clean(_MARKDOWN.render(markdown_text))


def render_plain(text: str) -> str:
    """Escape text for display as is: reasoning panels and the live tail of an answer."""
    return html.escape(text)


@functools.cache
def pygments_css() -> str:
    """The stylesheet for highlighted code: a light theme, and a dark one for dark mode."""

    def rules(style: str) -> str:
        formatter = HtmlFormatter(style=style, classprefix=TOKEN_CLASS_PREFIX)
        # Only background and token rules: the full get_style_defs() also emits unscoped rules
        # for bare `pre` and line numbers, which would restyle the rest of the page.
        lines = [
            *formatter.get_background_style_defs(".code-block"),
            *formatter.get_token_style_defs(".code-block"),
        ]
        return "\n".join(lines)

    return (
        f"{rules(LIGHT_STYLE)}\n@media (prefers-color-scheme: dark) {{\n{rules(DARK_STYLE)}\n}}\n"
    )


# A fence opens on a line indented at most three spaces; a backtick fence's info string may not
# contain a backtick (otherwise "```x```" on one line, an inline code span, would open a fence).
_FENCE_OPEN_RE = re.compile(r"( {0,3})(?:(`{3,})([^`]*)|(~{3,})(.*))\r?\n?")


class _BlockSplitter:
    """Cut a growing Markdown text into finished top-level blocks, one line at a time.

    A block is finished when
    - a blank line follows it and the next non-blank line starts in column 0 (a line starting
      with a space or tab may continue a list item or indented code, so it stays in the block);
      the decision is taken as soon as that line's first character arrives, or
    - it ends with the closing line of a fenced code block whose opening fence was not indented
      (such a fence is always top level, so nothing after it can belong to the same block).
    Nothing is cut while a fence is open, so code with blank lines stays whole.

    Blank lines after a block's content belong to that block, so the blocks and the tail
    together are exactly the text fed. Only complete lines and the first character of the
    partial line are looked at, and each character is scanned once: the result depends only on
    the text, never on how it was cut into deltas, and the total work is linear.

    Known departures from rendering the whole document at once: a list whose items are separated
    by blank lines becomes one list per item (same numbering, tighter spacing), and a link
    reference definition only applies inside its own block.
    """

    def __init__(self) -> None:
        self._lines: list[str] = []  # complete lines of the unfinished block
        self._partial: list[str] = []  # pieces of the incomplete last line
        self._has_content = False  # the block has a non-blank line
        self._after_blank = False  # a blank line followed the block's content
        self._fence: tuple[str, int] | None = None  # fence character and length when open
        self._fence_indented = False

    @property
    def tail(self) -> str:
        return "".join(self._lines) + "".join(self._partial)

    def feed(self, delta: str) -> list[str]:
        finished: list[str] = []
        start = 0
        while (end := delta.find("\n", start)) != -1:
            self._partial.append(delta[start : end + 1])
            line = "".join(self._partial)
            self._partial.clear()
            self._take_line(line, finished)
            start = end + 1
        if start < len(delta):
            self._partial.append(delta[start:])
            # Emitting at the first character of the next block, rather than at its line end,
            # shows the finished block while the model is still writing the next line.
            if self._after_blank and self._partial[0][0] not in " \t\r":
                self._finish_block(finished)
        return finished

    def _finish_block(self, finished: list[str]) -> None:
        finished.append("".join(self._lines))
        self._lines.clear()
        self._has_content = False
        self._after_blank = False

    def _take_line(self, line: str, finished: list[str]) -> None:
        if self._fence is not None:
            self._lines.append(line)
            char, length = self._fence
            stripped = line.rstrip(" \t\r\n")
            indent = len(stripped) - len(stripped.lstrip(" "))
            run = stripped[indent:]
            if indent <= 3 and len(run) >= length and run == char * len(run):
                self._fence = None
                if not self._fence_indented:
                    self._finish_block(finished)
            return
        if not line.strip(" \t\r\n"):
            self._lines.append(line)
            self._after_blank = self._has_content
            return
        if self._after_blank and line[0] not in " \t":
            self._finish_block(finished)
        self._lines.append(line)
        self._has_content = True
        self._after_blank = False
        if match := _FENCE_OPEN_RE.fullmatch(line):
            spaces, backticks, _, tildes, _ = match.groups()
            fence = backticks or tildes
            self._fence = (fence[0], len(fence))
            self._fence_indented = bool(spaces)


def split_blocks(text: str) -> tuple[list[str], str]:
    """Split Markdown into its finished top-level blocks and the unfinished tail.

    ``"".join(blocks) + tail == text``. The tail is the block still being written (it may
    include blank lines before it); see :class:`_BlockSplitter` for when a block is finished.
    """
    splitter = _BlockSplitter()
    blocks = splitter.feed(text)
    return blocks, splitter.tail


def render_markdown(text: str) -> str:
    """Render a whole answer exactly as streaming it through :class:`IncrementalMarkdown` does.

    Pages render stored answers with this, so a reload shows the same HTML the stream sent.
    """
    blocks, tail = split_blocks(text)
    return "".join(render_block(block) for block in [*blocks, tail])


class IncrementalMarkdown:
    """Render a streamed answer block by block.

    For any way of cutting a text into deltas, the HTML returned by all :meth:`feed` calls and
    :meth:`finish`, joined, equals :func:`render_markdown` of the text. When a :meth:`feed`
    returns no block, :attr:`tail` grew by exactly the delta; when it returns blocks, the tail
    was reset to the text after them. Each character is scanned and rendered once.
    """

    def __init__(self, render: Callable[[str], str] = render_block) -> None:
        self._render = render
        self._splitter = _BlockSplitter()
        self._chunks: list[str] = []
        self._finished = False

    def feed(self, delta: str) -> list[str]:
        """Append text; return the HTML of each block it finished, in order.

        An entry may be empty (a block of only link reference definitions renders to nothing);
        it is still returned so that a non-empty result always means the tail was reset.
        """
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._chunks.append(delta)
        return [self._render(block) for block in self._splitter.feed(delta)]

    def finish(self) -> list[str]:
        """End of stream: render the tail as the last block. The tail is empty afterwards."""
        if self._finished:
            return []
        self._finished = True
        tail = self._splitter.tail
        self._splitter = _BlockSplitter()
        return [self._render(tail)] if tail else []

    @property
    def tail(self) -> str:
        """Raw text of the unfinished block, to show escaped (:func:`render_plain`)."""
        return self._splitter.tail

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return "".join(self._chunks)
