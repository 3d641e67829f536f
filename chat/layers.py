"""The embedded default's channel layer."""

from __future__ import annotations

import time

from channels.layers import InMemoryChannelLayer


class EmbeddedChannelLayer(InMemoryChannelLayer):
    """Channels' in-memory layer, with its expiry sweep run at most once a second.

    Upstream sweeps every channel and group member on every `group_send` and `receive`, so
    each frame cost grew with the number of open conversations (quadratic under load).
    """

    _next_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        super()._clean_expired()
