"""URLs of the end-to-end project."""

from django.contrib.auth.views import LoginView, LogoutView
from django.urls import path

from . import views

urlpatterns = [
    path("health/", views.health),
    path("login/", LoginView.as_view()),
    path("logout/", LogoutView.as_view(next_page="/whoami/")),
    path("whoami/", views.whoami),
    path("presence/", views.presence_group),
    path("apresence/", views.apresence_group),
    path("presence/sizes/", views.presence_sizes),
    path("presence/user/<int:pk>/", views.presence_user),
    path("presence/disconnect/<int:pk>/", views.disconnect),
    path("presence/send/", views.send),
    path("presence/snapshot/", views.presence_snapshot),
    path("loop-lag/", views.loop_lag),
    path("hot-sender/", views.hot_sender),
    path("await-listeners/", views.await_listeners),
]
