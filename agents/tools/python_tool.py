"""The ``python`` tool: run model-written code in the sandbox and report what happened.

Offered only where `agents.sandbox` can really isolate code: without isolation the tool is not
offered at all (fail closed), and the reason says why.
"""

from __future__ import annotations

import signal
from typing import Any

from agents import sandbox
from agents.sandbox import SandboxLimits, SandboxResult
from agents.tools.base import Tool, ToolConfig, ToolContext, ToolFailure, current_config

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "code": {
            "type": "string",
            "maxLength": 100_000,
            "description": "A complete Python program; print what you want to see.",
        }
    },
    "required": ["code"],
    "additionalProperties": False,
}

DESCRIPTION = (
    "Run a Python 3 program in an isolated sandbox and get its exit code, stdout and stderr. "
    "Only the standard library is available; there is no network access and nothing persists "
    "between calls. CPU time, wall time, memory and output are limited."
)

# After the wall-clock limit the sandbox takes up to two 2-second grace periods to tear the
# run down, and starting it costs a little too: the tool's own limit must cover all of that.
_TEARDOWN_ALLOWANCE_S = 10.0


def unavailable(config: ToolConfig) -> str | None:
    """Why this machine cannot offer the tool (it cannot isolate code), or None."""
    problem = sandbox.isolation_problem()
    if problem is None:
        return None
    return f"the Python sandbox cannot isolate code on this machine: {problem}"


def run(arguments: dict[str, Any], context: ToolContext) -> str:
    """Run ``arguments["code"]`` with the configured limits."""
    limits = current_config().python_limits
    try:
        result = sandbox.run_python(arguments["code"], limits)
    except sandbox.SandboxUnavailable as exc:
        raise ToolFailure(f"The Python sandbox is unavailable: {exc.reason}") from exc
    return format_result(result)


def format_result(result: SandboxResult) -> str:
    """The run as text: exit status, both streams, and whatever stopped the program."""
    lines = [f"exit code: {_exit_status(result.exit_code)}"]
    if result.timed_out:
        lines.append(f"timed out after {result.duration_s:.1f} s")
    if result.exception:
        lines.append(f"exception: {result.exception}")
    if result.truncated:
        lines.append("output truncated: only the start of each stream was kept")
    lines.append(_stream("stdout", result.stdout))
    lines.append(_stream("stderr", result.stderr))
    return "\n".join(lines)


def _exit_status(code: int | None) -> str:
    if code is None:
        return "none (stopped at the time limit)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{code} (killed by {name})"
    return str(code)


def _stream(name: str, text: str) -> str:
    if not text:
        return f"{name}: (empty)"
    body = text.rstrip("\n")
    return f"{name}:\n{body}"


def build(limits: SandboxLimits) -> Tool:
    """The tool, with a time limit that covers the sandbox's own wall-clock limit."""
    return Tool(
        name="python",
        description=DESCRIPTION,
        parameters=PARAMETERS,
        run=run,
        time_limit=limits.wall_seconds + _TEARDOWN_ALLOWANCE_S,
        needs_network=False,
        unavailable=unavailable,
    )
