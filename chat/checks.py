"""System checks: refuse to run in production with development secrets."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register


@register()
def production_secrets(app_configs: Any, **kwargs: Any) -> list[Error]:
    if not settings.PRODUCTION:
        return []
    errors = []
    if not settings.SECRET_KEY or settings.SECRET_KEY.startswith("insecure-"):
        errors.append(
            Error(
                "GLASSBOX_SECRET_KEY (or GLASSBOX_SECRET_KEY_FILE) must be set in production.",
                id="glassbox.E001",
            )
        )
    if (
        settings.GLASSBOX_PROVIDER not in {"offline"}
        and not settings.GLASSBOX_API_KEY
        and settings.GLASSBOX_PROVIDER != "vllm"
    ):
        errors.append(
            Error(
                "GLASSBOX_API_KEY must be set for this provider in production.", id="glassbox.E002"
            )
        )
    return errors
