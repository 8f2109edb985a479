"""The test project's URLs: the admin, where channels_presence adds its pages."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
