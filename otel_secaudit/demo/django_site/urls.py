"""Routes of the Django demo project (Django routes have no leading slash)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("documents/", views.documents, name="documents"),
    path("admin/users/", views.admin_users, name="admin_users"),
    path("health/", views.health, name="health"),
]
