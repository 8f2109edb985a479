"""URLs: Django's own log-in and log-out views, the lobby, the rooms and the admin.

The admin's "Presence" pages need no URL of their own: channels_presence adds
them to ``admin.site``.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.lobby, name="lobby"),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
