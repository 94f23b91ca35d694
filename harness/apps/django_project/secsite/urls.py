"""Routes of the test project (Django routes have no leading slash): the admin, Django's own
``django.contrib.auth.urls`` under ``accounts/`` (login, logout, password change and reset) and
the project's views."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("ok/", views.ok, name="ok"),
    path("forbidden/", views.forbidden, name="forbidden"),
    path("reports/<int:year>/", views.reports, name="reports"),
    path("profile/", views.profile, name="profile"),
    path("staff-only/", views.staff_only, name="staff_only"),
    path("audit/", views.audit, name="audit"),
    path("calls/", views.calls, name="calls"),
    path("api/login/", views.api_login, name="api_login"),
    path("api/email-login/", views.api_email_login, name="api_email_login"),
    path("api/form-login/", views.form_login, name="form_login"),
]
