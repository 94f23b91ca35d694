"""Routes of the test project (Django routes have no leading slash)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("ok/", views.ok, name="ok"),
    path("forbidden/", views.forbidden, name="forbidden"),
    path("reports/<int:year>/", views.reports, name="reports"),
    path("calls/", views.calls, name="calls"),
    path("api/login/", views.api_login, name="api_login"),
]
