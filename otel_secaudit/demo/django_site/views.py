"""Views of the Django demo project."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse


def health(request: HttpRequest) -> HttpResponse:
    """Always 200 (the scenario's "come back after the block" request)."""
    return HttpResponse("ok", content_type="text/plain")


@login_required
def documents(request: HttpRequest) -> HttpResponse:
    """For any signed-in user."""
    return HttpResponse(f"documents of {request.user.get_username()}", content_type="text/plain")


@permission_required("auth.delete_user", raise_exception=True)
def admin_users(request: HttpRequest) -> HttpResponse:
    """Needs ``auth.delete_user`` (root has it, alice does not: 403)."""
    return HttpResponse("user administration", content_type="text/plain")
