from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone


def glassbox(request: HttpRequest) -> dict[str, Any]:
    """Provider label and limits every page shows."""
    offline = settings.GLASSBOX_PROVIDER == "offline"
    return {
        "provider_label": "offline simulator" if offline else settings.GLASSBOX_PROVIDER,
        "provider_offline": offline,
        "model_name": settings.GLASSBOX_MODEL,
        "max_message_chars": settings.GLASSBOX_MAX_MESSAGE_CHARS,
        # Server time for the thinking clock, so the browser's own clock never matters.
        "now_ms": int(timezone.now().timestamp() * 1000),
    }
