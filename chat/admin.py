from __future__ import annotations

from django.contrib import admin

from chat.models import Conversation, Message, Step


class StepInline(admin.TabularInline):
    model = Step
    extra = 0
    fields = (
        "index",
        "reasoning",
        "content",
        "started_at",
        "first_reasoning_at",
        "reasoning_ended_at",
        "finished_at",
        "finish_reason",
    )
    readonly_fields = fields


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "owner", "created_at", "updated_at")
    search_fields = ("title", "owner__username")
    list_filter = ("created_at",)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "conversation",
        "role",
        "status",
        "model",
        "completion_tokens",
        "created_at",
    )
    list_filter = ("role", "status", "provider", "model")
    search_fields = ("text", "conversation__title")
    readonly_fields = ("seq", "runner_channel", "heartbeat_at", "created_at", "finished_at")
    inlines = [StepInline]
