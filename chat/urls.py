from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(template_name="chat/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("send/", views.send_message, name="send-new"),
    path("c/new/", views.new_conversation, name="new-conversation"),
    path("c/<uuid:conversation_id>/", views.conversation_page, name="conversation"),
    path("c/<uuid:conversation_id>/send/", views.send_message, name="send"),
    path("c/<uuid:conversation_id>/rename/", views.rename_conversation, name="rename"),
    path("c/<uuid:conversation_id>/delete/", views.delete_conversation, name="delete"),
    path("c/<uuid:conversation_id>/m/<uuid:message_id>/stop/", views.stop_turn, name="stop"),
    path("c/<uuid:conversation_id>/tools/", views.set_tools, name="tools"),
    path("c/<uuid:conversation_id>/tool/<uuid:call_id>/", views.tool_result, name="tool-result"),
    path("c/<uuid:conversation_id>/m/<uuid:message_id>/retry/", views.retry_turn, name="retry"),
]
