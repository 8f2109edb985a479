"""URLs: Django's own log-in and log-out views, the lobby and the rooms."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.lobby, name="lobby"),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]
