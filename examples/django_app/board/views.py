"""One page: worker PID, users count (shared value), session, photos, a cached report."""

from __future__ import annotations

import os
import time
from typing import Any

from django.contrib.auth import get_user_model, login, logout
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from django_statekit.broadcast import shared_value
from statekit.errors import BlobError, BlobTooLarge

from .models import Photo

REPORT_TTL = 30


def slow_report() -> dict[str, Any]:
    """Sign-ups per day, computed once for every worker (the shared cache)."""

    def compute() -> dict[str, Any]:
        time.sleep(0.5)  # a report that takes a while
        users = get_user_model().objects.order_by("-date_joined")[:1000]
        days: dict[str, int] = {}
        for user in users:
            day = user.date_joined.strftime("%Y-%m-%d")
            days[day] = days.get(day, 0) + 1
        return {"rows": sorted(days.items(), reverse=True)[:5], "computed_by": os.getpid(),
                "computed_at": time.time()}

    report: dict[str, Any] = cache.get_or_set("board:report", compute, REPORT_TTL)
    return report


def index(request: HttpRequest) -> HttpResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    users_count = shared_value("users_count")
    photos = []
    if request.user.is_authenticated:
        photos = [{"name": p.name, "url": p.file.url} for p in Photo.objects.filter(owner=request.user)[:12]]
    return render(request, "board/index.html", {
        "pid": os.getpid(),
        "visits": request.session["visits"],
        "users_count_age": users_count.age,
        "photos": photos,
        "report": slow_report(),
    })


@require_POST
def login_view(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("user", "").strip()[:64]
    if not name:
        return HttpResponseBadRequest("a name is needed")
    user, _ = get_user_model().objects.get_or_create(username=name)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")  # rotates the session id
    return redirect("index")


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("index")


@require_POST
def upload(request: HttpRequest) -> HttpResponse:
    file = request.FILES.get("photo")
    if not request.user.is_authenticated or file is None:
        return HttpResponseBadRequest("log in and choose a photo")
    photo = Photo(owner=request.user, name=(file.name or "photo")[:255])
    try:
        # streamed to the blob store under a generated key, before (and outside) the
        # database transaction; refused, and nothing stored, if too large or not an image
        photo.file.save(file.name or "photo", file, save=False)
    except BlobTooLarge:
        return HttpResponse("photo too large", status=413)
    except BlobError as e:
        return HttpResponse(f"not a photo: {e}", status=415)
    photo.save()
    return redirect("index")
