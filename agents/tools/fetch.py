"""The ``fetch_url`` tool: read a public web page as text through the SSRF guard."""

from __future__ import annotations

from typing import Any

from agents import netguard
from agents.tools.base import Tool, ToolContext, ToolFailure, current_config

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "url": {
            "type": "string",
            "maxLength": 2048,
            "description": "An http or https URL on the public internet.",
        }
    },
    "required": ["url"],
    "additionalProperties": False,
}

DESCRIPTION = (
    "Fetch a public web page (http or https) and return its readable text: HTML is converted "
    "to text, plain text and JSON pass through. Private and internal addresses are refused."
)

# netguard's own deadline covers every hop; the tool's limit adds room for DNS, which that
# deadline does not bound.
_FETCH_TIMEOUT_S = 15.0


def run(arguments: dict[str, Any], context: ToolContext) -> str:
    """Fetch ``arguments["url"]`` and describe the response."""
    config = current_config()
    try:
        page = netguard.fetch_url(
            arguments["url"],
            max_bytes=config.fetch_max_bytes,
            timeout=_FETCH_TIMEOUT_S,
            allow_endpoints=config.fetch_allow_endpoints,
        )
    except netguard.BlockedAddress as exc:
        raise ToolFailure(_refusal(exc)) from exc
    except netguard.FetchError as exc:
        raise ToolFailure(f"Fetch failed: {exc}") from exc
    return format_page(page, config.fetch_max_bytes)


def _refusal(exc: netguard.BlockedAddress) -> str:
    reason = exc.reason
    if reason.startswith("not "):
        return f"Refused: {exc.address} is {reason}."
    article = "an" if reason[:1].lower() in "aeiou" else "a"
    return f"Refused: {exc.address} is {article} {reason}."


def format_page(page: netguard.FetchResult, max_bytes: int) -> str:
    """The page with a short header: where it ended up, its status and type."""
    url = page.final_url if page.final_url == page.url else f"{page.final_url} (from {page.url})"
    header = [f"URL: {url}", f"Status: {page.status}", f"Content-Type: {page.content_type}"]
    if page.truncated:
        header.append(f"Note: the page is larger than {max_bytes} bytes; only its start was read.")
    return "\n".join(header) + "\n\n" + page.text


TOOL = Tool(
    name="fetch_url",
    description=DESCRIPTION,
    parameters=PARAMETERS,
    run=run,
    time_limit=_FETCH_TIMEOUT_S + 15.0,
    needs_network=True,
)
