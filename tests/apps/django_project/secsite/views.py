"""Views of the test project. ``calls`` counts how often each view ran in this process, so
tests can check that a blocked request never reached a view."""

from __future__ import annotations

from collections import Counter

from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse

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


def calls(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dict(CALLS))
