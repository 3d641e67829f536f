from __future__ import annotations

from django.contrib import admin

from chat.models import Conversation, Message, Step, ToolCall, ToolSetting


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


class ToolCallInline(admin.TabularInline):
    model = ToolCall
    extra = 0
    fields = (
        "step_index",
        "index",
        "call_id",
        "name",
        "status",
        "attempts",
        "worker",
        "arguments_raw",
        "result",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields


@admin.register(ToolSetting)
class ToolSettingAdmin(admin.ModelAdmin):
    """Switch tools on or off for the whole deployment."""

    list_display = ("name", "enabled", "availability")
    list_editable = ("enabled",)

    @admin.display(description="on this machine")
    def availability(self, obj: ToolSetting) -> str:
        from agents.tools import current_config, get_tool

        tool = get_tool(obj.name)
        if tool is None:
            return "not installed"
        return tool.unavailable(current_config()) or "available"


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "attempts", "worker", "message", "created_at")
    list_filter = ("status", "name")
    search_fields = ("call_id", "arguments_raw", "result")
    readonly_fields = [f.name for f in ToolCall._meta.fields]


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
    inlines = [StepInline, ToolCallInline]
