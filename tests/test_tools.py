"""The tool layer: provider rules, argument checking, and each tool's behaviour.

Hermetic: the SearXNG backend and the fetched page are served by a local HTTP server; the
recall search is the Django side's injected function, so a fake one stands in for it.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agents import sandbox
from agents.sandbox import SandboxLimits, SandboxResult
from agents.tools import (
    MAX_TOOLS,
    REGISTRY,
    ArgumentError,
    RecallHit,
    Tool,
    ToolConfig,
    ToolContext,
    ToolFailure,
    builtin_web_search_result,
    configure,
    current_config,
    get_tool,
    is_builtin_web_search,
    offered_tools,
    parse_arguments,
    tool_specs,
    truncate_result,
    unknown_tool_message,
)
from agents.tools.python_tool import format_result
from tests.procs import run_without_sys_admin

KIMI_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
CONTEXT = ToolContext(user_id=1, conversation_id="c1")


def _run(name: str, arguments: dict[str, Any], context: ToolContext = CONTEXT) -> str:
    tool = get_tool(name)
    assert tool is not None
    return tool.run(parse_arguments(tool, json.dumps(arguments)), context)


def _noop(arguments: dict[str, Any], context: ToolContext) -> str:
    return ""


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


@pytest.fixture
def configured() -> Iterator[None]:
    """Lets a test call `configure`, restoring the configuration afterwards."""
    before = current_config()
    yield
    configure(before)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _LocalServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.server.queries.append(parse_qs(url.query))
        status, content_type, body = self.server.routes.get(
            url.path, (404, "text/plain", b"not found")
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Keep test output clean.


class _LocalServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.queries: list[dict[str, list[str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve_json(self, path: str, payload: object) -> None:
        self.routes[path] = (200, "application/json", json.dumps(payload).encode())


@pytest.fixture
def server() -> Iterator[_LocalServer]:
    httpd = _LocalServer()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


# Provider rules --------------------------------------------------------------------------


def test_every_tool_spec_obeys_the_kimi_function_rules() -> None:
    config = ToolConfig(searxng_url="http://search.internal")
    assert list(REGISTRY) == ["python", "fetch_url", "web_search", "recall", "echo"]
    specs = tool_specs(REGISTRY.values(), config)
    assert len(specs) <= MAX_TOOLS
    for spec in specs:
        assert spec["type"] == "function"
        function = spec["function"]
        assert set(function) == {"name", "description", "parameters"}
        assert function["description"]
        assert re.match(KIMI_NAME_RE, function["name"])
        parameters = function["parameters"]
        assert parameters["type"] == "object"
        assert parameters["additionalProperties"] is False
        assert set(parameters["required"]) <= set(parameters["properties"])
        json.dumps(spec)  # Goes on the wire as JSON.


@pytest.mark.parametrize("name", ["1python", "$web_search", "has space", "a" * 65, ""])
def test_a_tool_with_a_name_the_provider_rejects_cannot_be_created(name: str) -> None:
    with pytest.raises(ValueError, match="tool name"):
        Tool(name=name, description="d", parameters=_schema({}, []), run=_noop)


@pytest.mark.parametrize(
    "parameters",
    [
        {"type": "array", "items": {}},
        {"type": "object", "properties": {}},
        {"type": "object", "properties": {}, "additionalProperties": True},
        _schema({"a": {"type": "string"}}, ["b"]),
        _schema({"a": {"type": "no-such-type"}}, []),
    ],
)
def test_a_tool_without_a_strict_object_schema_cannot_be_created(
    parameters: dict[str, Any],
) -> None:
    with pytest.raises(Exception, match=r"parameters|required|is not valid"):
        Tool(name="t", description="d", parameters=parameters, run=_noop)


def test_a_spec_is_a_copy_that_callers_may_edit() -> None:
    tool = REGISTRY["echo"]
    tool.spec()["function"]["parameters"]["properties"].clear()
    assert "text" in tool.spec()["function"]["parameters"]["properties"]


def test_offered_tools_keep_registry_order_and_ignore_unknown_names() -> None:
    config = ToolConfig(searxng_url="http://search.internal")
    offered = offered_tools(["echo", "nope", "recall", "fetch_url", "recall"], config)
    assert [tool.name for tool in offered] == ["fetch_url", "recall", "echo"]


def test_echo_is_off_by_default_and_the_rest_on() -> None:
    defaults = {name: tool.default_enabled for name, tool in REGISTRY.items()}
    assert defaults == {
        "python": True,
        "fetch_url": True,
        "web_search": True,
        "recall": True,
        "echo": False,
    }
    assert [name for name, tool in REGISTRY.items() if tool.needs_network] == [
        "fetch_url",
        "web_search",
    ]


def test_bad_tool_configuration_fails_at_start() -> None:
    with pytest.raises(ValueError, match="searxng_url"):
        ToolConfig(searxng_url="search.internal")
    with pytest.raises(ValueError, match="max_result_chars"):
        ToolConfig(max_result_chars=0)


# Arguments --------------------------------------------------------------------------------


def test_invalid_json_arguments_say_where_the_json_breaks() -> None:
    with pytest.raises(ArgumentError) as caught:
        parse_arguments(REGISTRY["echo"], '{"text":"a""b"}')
    assert str(caught.value) == (
        "Arguments are not valid JSON: Expecting ',' delimiter at line 1 column 12 (char 11). "
        "Send a JSON object matching the schema."
    )


def test_nan_is_not_json() -> None:
    with pytest.raises(ArgumentError, match="NaN is not a JSON value"):
        parse_arguments(REGISTRY["echo"], '{"text": NaN}')


@pytest.mark.parametrize(
    ("raw", "kind"),
    [("[1, 2]", "an array"), ('"text"', "a string"), ("3", "a number"), ("null", "null")],
)
def test_arguments_must_be_an_object(raw: str, kind: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        parse_arguments(REGISTRY["echo"], raw)
    assert str(caught.value) == (
        f"Arguments must be a JSON object, not {kind}. Send a JSON object matching the schema."
    )


def test_every_schema_violation_is_listed_with_its_path() -> None:
    with pytest.raises(ArgumentError) as caught:
        parse_arguments(REGISTRY["echo"], '{"text": 5, "loud": true}')
    assert str(caught.value) == (
        "Arguments for echo do not match its schema:\n"
        "- $: Additional properties are not allowed ('loud' was unexpected)\n"
        "- $.text: 5 is not of type 'string'\n"
        "Send a JSON object matching the schema."
    )


def test_a_missing_required_argument_is_named() -> None:
    with pytest.raises(ArgumentError, match=r"- \$: 'query' is a required property"):
        parse_arguments(REGISTRY["recall"], '{"limit": 3}')


def test_range_violations_are_reported() -> None:
    with pytest.raises(ArgumentError) as caught:
        parse_arguments(REGISTRY["recall"], '{"query": "", "limit": 50}')
    message = str(caught.value)
    assert "- $.limit: 50 is greater than the maximum of 20" in message
    assert "- $.query: '' should be non-empty" in message


def test_a_huge_bad_value_is_abbreviated_but_the_complaint_kept() -> None:
    with pytest.raises(ArgumentError) as caught:
        parse_arguments(REGISTRY["echo"], json.dumps({"text": "a" * 20_000}))
    message = str(caught.value)
    assert message.endswith("… is too long\nSend a JSON object matching the schema.")
    assert len(message) < 300


def test_the_error_list_is_capped() -> None:
    names = [f"p{i}" for i in range(8)]
    tool = Tool(
        name="many",
        description="d",
        parameters=_schema({name: {"type": "string"} for name in names}, names),
        run=_noop,
    )
    with pytest.raises(ArgumentError) as caught:
        parse_arguments(tool, "{}")
    lines = str(caught.value).splitlines()
    assert lines[1:6] == [f"- $: 'p{i}' is a required property" for i in range(5)]
    assert lines[6:] == ["- … and 3 more", "Send a JSON object matching the schema."]


def test_empty_arguments_mean_an_empty_object() -> None:
    tool = Tool(name="no_args", description="d", parameters=_schema({}, []), run=_noop)
    assert parse_arguments(tool, "") == {}
    assert parse_arguments(tool, "  \n") == {}
    # Still validated: a tool with required arguments says what is missing.
    with pytest.raises(ArgumentError, match="'text' is a required property"):
        parse_arguments(REGISTRY["echo"], "")


def test_valid_arguments_come_back_as_a_dict() -> None:
    arguments = parse_arguments(REGISTRY["web_search"], '{"query": "kimi", "max_results": 3}')
    assert arguments == {"query": "kimi", "max_results": 3}


def test_unknown_tool_message_lists_what_is_available() -> None:
    assert unknown_tool_message("x", ["a", "b"]) == "Unknown tool 'x'. Available tools: a, b."
    assert unknown_tool_message("x", []) == "Unknown tool 'x'. No tools are available."


# Results ----------------------------------------------------------------------------------


def test_a_short_result_is_kept_whole() -> None:
    assert truncate_result("hello", 5) == ("hello", False)


def test_a_long_result_keeps_head_and_tail_around_a_marker() -> None:
    text = "H" * 500 + "M" * 1000 + "T" * 500
    cut, truncated = truncate_result(text, 200)
    assert truncated
    assert len(cut) <= 200
    head, marker, tail = cut.split("\n")
    assert head == "H" * len(head) and tail == "T" * len(tail)
    omitted = len(text) - len(head) - len(tail)
    assert marker == f"[… {omitted} characters omitted …]"
    assert abs(len(head) - len(tail)) <= 1


def test_a_tiny_limit_still_holds() -> None:
    assert truncate_result("abcdefghij", 3) == ("abc", True)


# python -----------------------------------------------------------------------------------


def test_python_is_offered_exactly_where_code_can_be_isolated() -> None:
    problem = sandbox.isolation_problem()
    reason = REGISTRY["python"].unavailable(current_config())
    if problem is None:
        assert reason is None
        assert "exit code: 0\nstdout:\n42" in _run("python", {"code": "print(6 * 7)"})
    else:
        assert reason == f"the Python sandbox cannot isolate code on this machine: {problem}"
        assert REGISTRY["python"] not in offered_tools(["python"])


def test_python_fails_closed_when_isolation_is_impossible() -> None:
    # A real worker without the needed privilege (CAP_SYS_ADMIN dropped), not a simulated one.
    result = run_without_sys_admin(
        "from agents.tools import REGISTRY, current_config, offered_tools\n"
        "print(REGISTRY['python'].unavailable(current_config()))\n"
        "print(','.join(t.name for t in offered_tools(['python', 'echo'])))\n"
    )
    reason, offered = result.stdout.splitlines()
    assert reason.startswith("the Python sandbox cannot isolate code on this machine: ")
    assert "namespaces" in reason
    assert offered == "echo"


@pytest.fixture
def isolation_required() -> None:
    problem = sandbox.isolation_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"sandbox isolation unavailable on this CI machine: {problem}")
    pytest.skip(f"sandbox isolation unavailable here: {problem}")


@pytest.mark.usefixtures("isolation_required")
def test_python_reports_what_a_program_printed() -> None:
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)"
    assert _run("python", {"code": code}) == "exit code: 0\nstdout:\nout\nstderr:\nerr"


@pytest.mark.usefixtures("isolation_required")
def test_python_reports_an_exception() -> None:
    result = _run("python", {"code": "print('before')\n{}['key']"})
    assert result.startswith("exit code: 1\nexception: KeyError: 'key'\nstdout:\nbefore\nstderr:\n")
    assert "Traceback (most recent call last):" in result


def test_python_time_limit_covers_the_configured_wall_limit(configured: None) -> None:
    configure(ToolConfig(python_limits=SandboxLimits(wall_seconds=60.0)))
    tool = get_tool("python")
    assert tool is not None
    assert tool.time_limit > 60.0
    assert REGISTRY["python"] is tool


def test_python_result_names_limits_signals_and_truncation() -> None:
    timed_out = SandboxResult(
        stdout="x" * 10,
        stderr="",
        exception="TimeoutError: wall-clock limit of 20 s exceeded",
        exit_code=None,
        timed_out=True,
        truncated=True,
        duration_s=20.04,
    )
    assert format_result(timed_out) == (
        "exit code: none (stopped at the time limit)\n"
        "timed out after 20.0 s\n"
        "exception: TimeoutError: wall-clock limit of 20 s exceeded\n"
        "output truncated: only the start of each stream was kept\n"
        "stdout:\nxxxxxxxxxx\n"
        "stderr: (empty)"
    )
    killed = SandboxResult("", "", "killed by SIGKILL", -9, False, False, 0.5)
    assert format_result(killed).startswith("exit code: -9 (killed by SIGKILL)\n")


# fetch_url --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8000/admin/", "Refused: 127.0.0.1 is a loopback address."),
        (
            "http://169.254.169.254/latest/meta-data/",
            "Refused: 169.254.169.254 is a cloud metadata endpoint.",
        ),
        (
            "http://[::ffff:10.0.0.1]/",
            "Refused: ::ffff:a00:1 is an IPv4-mapped address of 10.0.0.1 (private address).",
        ),
    ],
)
def test_fetch_url_refuses_internal_addresses(url: str, message: str) -> None:
    with pytest.raises(ToolFailure) as caught:
        _run("fetch_url", {"url": url})
    assert str(caught.value) == message


def test_fetch_url_explains_other_failures() -> None:
    with pytest.raises(ToolFailure, match="^Fetch failed: only http and https URLs"):
        _run("fetch_url", {"url": "file:///etc/passwd"})


def test_fetch_url_returns_the_page_with_a_header(server: _LocalServer, configured: None) -> None:
    page = b"<html><head><title>Docs</title></head><body><h1>Hello</h1><p>World</p></body></html>"
    server.routes["/page"] = (200, "text/html; charset=utf-8", page)
    port = int(server.server_address[1])
    configure(ToolConfig(fetch_allow_endpoints=(("127.0.0.1", port),)))
    assert _run("fetch_url", {"url": f"{server.url}/page"}) == (
        f"URL: {server.url}/page\nStatus: 200\nContent-Type: text/html\n\nDocs\n\n# Hello\n\nWorld"
    )


def test_fetch_url_says_when_a_page_was_cut(server: _LocalServer, configured: None) -> None:
    server.routes["/long"] = (200, "text/plain", b"z" * 500)
    port = int(server.server_address[1])
    configure(ToolConfig(fetch_max_bytes=100, fetch_allow_endpoints=(("127.0.0.1", port),)))
    result = _run("fetch_url", {"url": f"{server.url}/long"})
    assert "Note: the page is larger than 100 bytes; only its start was read." in result
    assert result.endswith("\n\n" + "z" * 100)


# web_search -------------------------------------------------------------------------------

SEARXNG_ANSWER = {
    "query": "kimi k2",
    "results": [
        {"title": "Kimi K2", "url": "https://example.com/k2", "content": "A thinking\n model."},
        {"title": "", "url": "https://example.com/untitled", "content": ""},
        {"title": "No URL", "content": "dropped"},
        {"title": "Third", "url": "https://example.com/3", "content": "three"},
    ],
}


def test_web_search_queries_searxng_and_numbers_the_results(
    server: _LocalServer, configured: None
) -> None:
    server.serve_json("/search", SEARXNG_ANSWER)
    configure(ToolConfig(searxng_url=server.url + "/"))
    result = _run("web_search", {"query": "kimi k2", "max_results": 2})
    assert result == (
        "1. Kimi K2 — https://example.com/k2\nA thinking model.\n\n"
        "2. https://example.com/untitled — https://example.com/untitled"
    )
    assert server.queries == [{"q": ["kimi k2"], "format": ["json"]}]


def test_web_search_defaults_to_five_results(server: _LocalServer, configured: None) -> None:
    many = [{"title": f"R{i}", "url": f"https://e.com/{i}", "content": ""} for i in range(9)]
    server.serve_json("/search", {"results": many})
    configure(ToolConfig(searxng_url=server.url))
    result = _run("web_search", {"query": "q"})
    assert result.splitlines()[-1] == "5. R4 — https://e.com/4"


def test_web_search_says_when_nothing_was_found(server: _LocalServer, configured: None) -> None:
    server.serve_json("/search", {"results": []})
    configure(ToolConfig(searxng_url=server.url))
    assert _run("web_search", {"query": "zzz"}) == "No results for 'zzz'."


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ((403, "text/html", b"forbidden"), r"The search backend failed \(HTTP 403\)\."),
        ((200, "application/json", b"not json"), "The search backend sent an unreadable answer."),
        ((200, "application/json", b"[1]"), "The search backend sent an unreadable answer."),
    ],
)
def test_web_search_backend_failures_are_clean(
    server: _LocalServer, configured: None, route: tuple[int, str, bytes], message: str
) -> None:
    server.routes["/search"] = route
    configure(ToolConfig(searxng_url=server.url))
    with pytest.raises(ToolFailure, match=f"^{message}$"):
        _run("web_search", {"query": "q"})


def test_an_unreachable_search_backend_is_a_clean_failure(configured: None) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configure(ToolConfig(searxng_url=f"http://127.0.0.1:{port}"))
    with pytest.raises(ToolFailure, match="^The search backend could not be reached.$"):
        _run("web_search", {"query": "q"})


def test_web_search_is_not_offered_without_a_backend() -> None:
    config = ToolConfig(provider="openrouter")
    assert [tool.name for tool in offered_tools(["web_search", "echo"], config)] == ["echo"]
    reason = REGISTRY["web_search"].unavailable(config)
    assert reason is not None and "no web search backend" in reason


def test_web_search_on_moonshot_is_the_builtin() -> None:
    config = ToolConfig(provider="moonshot")
    offered = offered_tools(["web_search"], config)
    assert tool_specs(offered, config) == [
        {"type": "builtin_function", "function": {"name": "$web_search"}}
    ]
    assert is_builtin_web_search("$web_search")
    assert not is_builtin_web_search("web_search")
    raw = '{"search_result": {"search_id": "abc"}, "usage": {"total_tokens": 12}}'
    assert builtin_web_search_result(raw) == raw


def test_searxng_wins_over_the_moonshot_builtin() -> None:
    config = ToolConfig(provider="moonshot", searxng_url="http://search.internal")
    spec = REGISTRY["web_search"].spec(config)
    assert spec["type"] == "function"
    assert spec["function"]["name"] == "web_search"


# recall and echo --------------------------------------------------------------------------


def test_recall_cites_each_passage() -> None:
    asked: list[tuple[str, int]] = []

    def fake_recall(query: str, limit: int) -> list[RecallHit]:
        asked.append((query, limit))
        return [
            RecallHit("c-1", "m-1", 0, "Prime sieve", "First try\n  the sieve.", "2025-11-02"),
            RecallHit("c-2", "m-9", 3, "", "Bounds check.", "2025-11-03"),
        ]

    context = ToolContext(user_id=1, recall=fake_recall)
    assert _run("recall", {"query": "sieve"}, context) == (
        "[conversation c-1 · message m-1 · step 0] Prime sieve: First try the sieve.\n"
        "[conversation c-2 · message m-9 · step 3] Untitled: Bounds check."
    )
    _run("recall", {"query": "bounds", "limit": 1}, context)
    assert asked == [("sieve", 5), ("bounds", 1)]


def test_recall_with_no_match_says_so() -> None:
    context = ToolContext(recall=lambda query, limit: [])
    assert _run("recall", {"query": "nothing"}, context) == "No past reasoning matched."


def test_recall_without_a_search_function_fails_cleanly() -> None:
    with pytest.raises(ToolFailure, match="Recall is not available"):
        _run("recall", {"query": "x"}, ToolContext())


def test_echo_returns_its_text() -> None:
    assert _run("echo", {"text": "ping ✓"}) == "ping ✓"
