"""kombu's filesystem transport, made safe for a sender and a worker on one machine.

Upstream writes a message by opening its final name and then writing, while the reader does
not lock: a worker polling at the wrong moment reads an empty file, fails to decode it and
stops with "Unrecoverable error". Here a message is written beside the queue and renamed
into it (atomic on one filesystem), and a file that still does not decode is logged and
dropped instead of killing the worker.
"""

from __future__ import annotations

import logging
import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.json import dumps

logger = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    # kombu's own stubs disagree between the abstract and the filesystem channel.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        staging = os.path.join(self.processed_folder, f"{name}.partial")
        with open(staging, "wb") as handle:
            handle.write(dumps(payload).encode())
        os.replace(staging, os.path.join(self.data_folder_out, name))

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        while True:
            try:
                return super()._get(queue)
            except ValueError as exc:  # JSONDecodeError: a damaged file, already removed
                logger.error("dropped an undecodable broker message: %s", exc)


class Transport(filesystem.Transport):
    Channel = Channel
