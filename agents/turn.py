"""The turn loop: stream a step from the model, hand every event to a sink, repeat.

The loop owns the conversation with the model; the sink (implemented on the Django side)
owns persistence and publishing. Keeping them apart lets the loop run against any sink in
tests and benchmarks, and keeps Django out of `agents/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from agents.client import ProviderClient, StepResult
from agents.stream import StreamEvent


class TurnSink(Protocol):
    """Receives everything a turn produces, in order."""

    async def step_started(self, index: int) -> None: ...

    async def on_event(self, event: StreamEvent) -> None: ...

    async def step_finished(self, index: int, result: StepResult) -> None: ...


@dataclass(frozen=True)
class TurnOutcome:
    steps: int
    last: StepResult


async def run_turn(
    client: ProviderClient,
    messages: list[dict[str, Any]],
    sink: TurnSink,
    *,
    first_step: int = 0,
) -> TurnOutcome:
    """Run one assistant turn to its answer.

    Raises `ProviderError` when the provider fails (after the client's own retries, which
    only happen before any output), and `CancelledError` when the caller stops the turn;
    either way the sink already holds everything that streamed.
    """
    index = first_step
    await sink.step_started(index)
    result: StepResult | None = None
    async for item in client.stream_step(messages):
        if isinstance(item, StepResult):
            result = item
        else:
            await sink.on_event(item)
    assert result is not None, "stream_step always ends with a StepResult"
    await sink.step_finished(index, result)
    return TurnOutcome(steps=index - first_step + 1, last=result)
