"""Views of the test project. ``calls`` counts how often each view ran in this process, so
tests can check that a blocked request never reached a view."""

from __future__ import annotations

import json
from collections import Counter

from django.contrib.auth import authenticate, get_user_model, login
from django.contrib.auth.decorators import login_required, permission_required, user_passes_test
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

CALLS: Counter[str] = Counter()


def ok(request: HttpRequest) -> HttpResponse:
    CALLS["ok"] += 1
    return HttpResponse("ok")


def forbidden(request: HttpRequest) -> HttpResponse:
    CALLS["forbidden"] += 1
    raise PermissionDenied("no")


@permission_required("auth.delete_user", raise_exception=True)
def reports(request: HttpRequest, year: int) -> HttpResponse:
    CALLS["reports"] += 1
    return HttpResponse(f"reports {year}")


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    """Anonymous visitors are sent to the login page (no violation)."""
    CALLS["profile"] += 1
    return HttpResponse(f"profile of {request.user.pk}")


@user_passes_test(lambda user: user.is_staff)
def staff_only(request: HttpRequest) -> HttpResponse:
    """A signed-in account without staff status is sent to the login page."""
    CALLS["staff_only"] += 1
    return HttpResponse("staff")


@permission_required("auth.view_user")
def audit(request: HttpRequest) -> HttpResponse:
    """Without ``auth.view_user`` a signed-in account is sent to the login page (no
    ``raise_exception``, unlike :func:`reports`)."""
    CALLS["audit"] += 1
    return HttpResponse("audit")


def calls(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dict(CALLS))


@csrf_exempt
def api_login(request: HttpRequest) -> JsonResponse:
    """A JSON login endpoint (the kind OTEL_SECAUDIT_LOGIN_ROUTES is for): 400 without a
    password, 401 on bad credentials, 200 and a session on success."""
    CALLS["api_login"] += 1
    data = json.loads(request.body or b"{}")
    if not data.get("password"):
        return JsonResponse({"error": "password required"}, status=400)
    user = authenticate(request, username=data.get("username"), password=data["password"])
    if user is None:
        return JsonResponse({"error": "bad credentials"}, status=401)
    login(request, user)
    return JsonResponse({"ok": True})


@csrf_exempt
def api_email_login(request: HttpRequest) -> JsonResponse:
    """A JSON login by e-mail address (``{"email": ..., "password": ...}``): 401 on bad
    credentials, 200 and a session on success. Any other field of the body is ignored."""
    CALLS["api_email_login"] += 1
    data = json.loads(request.body or b"{}")
    email = data.get("email")
    account = get_user_model().objects.filter(email=email).first() if email else None
    user = None
    if account is not None:
        user = authenticate(request, username=account.get_username(), password=data.get("password"))
    if user is None:
        return JsonResponse({"error": "bad credentials"}, status=401)
    login(request, user)
    return JsonResponse({"ok": True})


@csrf_exempt
def form_login(request: HttpRequest) -> JsonResponse:
    """A form login for scripts: ``request.POST`` (the last of duplicate fields); 400 without
    a password, 401 on bad credentials, 200 and a session on success."""
    CALLS["form_login"] += 1
    if not request.POST.get("password"):
        return JsonResponse({"error": "password required"}, status=400)
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return JsonResponse({"error": "bad credentials"}, status=401)
    login(request, user)
    return JsonResponse({"ok": True})
