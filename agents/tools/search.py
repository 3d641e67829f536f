"""The ``web_search`` tool, with two backends.

- SearXNG: an instance the operator configured (``searxng_url``), queried here over its JSON
  API. It is the operator's own service, often on localhost, so it is reached directly, not
  through fetch_url's guard against internal addresses; the model chooses only the query.
- Moonshot's builtin ``$web_search``: with provider ``moonshot`` and no SearXNG, the tool is
  offered as Moonshot's builtin, which Moonshot runs server-side. The model's call comes back
  to us only to be echoed (`builtin_web_search_result`).

With neither, the tool is not offered.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from agents.tools.base import (
    BUILTIN_WEB_SEARCH,
    Tool,
    ToolConfig,
    ToolContext,
    ToolFailure,
    current_config,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESULTS = 5
SEARCH_TIMEOUT_S = 10.0
# A snippet is a teaser; the model can fetch the page for more.
_MAX_SNIPPET_CHARS = 500

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 500, "description": "Query."},
        "max_results": {
            "type": "integer",
            "minimum": 1,
            "maximum": 10,
            "description": f"How many results to return (default {DEFAULT_MAX_RESULTS}).",
        },
    },
    "required": ["query"],
    "additionalProperties": False,
}

DESCRIPTION = (
    "Search the web and get the top results as title, URL and snippet. Use fetch_url to read "
    "a result in full."
)


def uses_moonshot_builtin(config: ToolConfig) -> bool:
    """Whether search is Moonshot's server-side builtin (SearXNG wins when both exist)."""
    return not config.searxng_url and config.provider.lower() == "moonshot"


def builtin_web_search_result(raw_arguments: str) -> str:
    """The tool message content for a ``$web_search`` call: its arguments, unchanged.

    Moonshot runs the search itself; echoing the arguments byte for byte is how the protocol
    asks us to let it go ahead.
    """
    return raw_arguments


def unavailable(config: ToolConfig) -> str | None:
    """Why search cannot be offered here, or None."""
    if config.searxng_url or uses_moonshot_builtin(config):
        return None
    return "no web search backend is configured (set a SearXNG URL, or use Moonshot's builtin)"


def builtin(config: ToolConfig) -> str | None:
    """Moonshot's builtin name when it stands in for this tool."""
    return BUILTIN_WEB_SEARCH if uses_moonshot_builtin(config) else None


def run(arguments: dict[str, Any], context: ToolContext) -> str:
    """Search SearXNG for ``arguments["query"]``."""
    config = current_config()
    if not config.searxng_url:
        raise ToolFailure("Web search is not available here.")
    query: str = arguments["query"]
    # int(): JSON Schema counts 5.0 as an integer.
    max_results = int(arguments.get("max_results", DEFAULT_MAX_RESULTS))
    results = _searxng(config.searxng_url, query)
    return format_results(query, results[:max_results])


def _searxng(base_url: str, query: str) -> list[dict[str, Any]]:
    url = base_url.rstrip("/") + "/search"
    try:
        # trust_env=False: a proxy configured for outbound traffic must not sit between us and
        # the operator's own (often local) instance.
        response = httpx.get(
            url,
            params={"q": query, "format": "json"},
            headers={"Accept": "application/json"},
            timeout=SEARCH_TIMEOUT_S,
            trust_env=False,
        )
    except httpx.TimeoutException as exc:
        message = f"The search backend did not answer within {SEARCH_TIMEOUT_S:g} s."
        raise ToolFailure(message) from exc
    except httpx.HTTPError as exc:
        # The details name an internal host: they go to the log, not to the model.
        logger.warning("SearXNG at %s unreachable: %s", url, exc)
        raise ToolFailure("The search backend could not be reached.") from exc
    if response.status_code != 200:
        # 403 usually means the instance does not enable the json format (settings.yml).
        logger.warning("SearXNG at %s answered HTTP %s", url, response.status_code)
        raise ToolFailure(f"The search backend failed (HTTP {response.status_code}).")
    try:
        payload = response.json()
    except ValueError as exc:
        logger.warning("SearXNG at %s sent a body that is not JSON", url)
        raise ToolFailure("The search backend sent an unreadable answer.") from exc
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list):
        raise ToolFailure("The search backend sent an unreadable answer.")
    return [item for item in results if isinstance(item, dict) and item.get("url")]


def format_results(query: str, results: list[dict[str, Any]]) -> str:
    """Numbered results, each ``title — url`` then its snippet."""
    if not results:
        return f"No results for {query!r}."
    blocks = []
    for number, item in enumerate(results, start=1):
        url = str(item["url"])
        title = " ".join(str(item.get("title") or "").split()) or url
        snippet = " ".join(str(item.get("content") or "").split())
        if len(snippet) > _MAX_SNIPPET_CHARS:
            snippet = snippet[: _MAX_SNIPPET_CHARS - 1] + "…"
        blocks.append(f"{number}. {title} — {url}" + (f"\n{snippet}" if snippet else ""))
    return "\n\n".join(blocks)


TOOL = Tool(
    name="web_search",
    description=DESCRIPTION,
    parameters=PARAMETERS,
    run=run,
    time_limit=SEARCH_TIMEOUT_S + 5.0,
    needs_network=True,
    unavailable=unavailable,
    builtin=builtin,
)
