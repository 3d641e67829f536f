from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings


class MessageForm(forms.Form):
    text = forms.CharField(
        strip=True,
        widget=forms.Textarea(attrs={"rows": 1, "placeholder": "Ask anything…"}),
        error_messages={"required": "Write a message first."},
    )

    def clean_text(self) -> str:
        text: str = self.cleaned_data["text"]
        limit = settings.GLASSBOX_MAX_MESSAGE_CHARS
        if len(text) > limit:
            raise forms.ValidationError(
                f"This message has {len(text):,} characters; the limit is {limit:,}. "
                "Nothing was sent."
            )
        return text


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200, strip=True)


class ToolsForm(forms.Form):
    enabled = forms.MultipleChoiceField(required=False)

    def __init__(self, *args: Any, choices: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["enabled"].choices = [(name, name) for name in choices]  # type: ignore[attr-defined]
