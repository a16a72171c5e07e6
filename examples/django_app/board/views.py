"""One page: worker PID, users count (shared value), session, photos, a cached report."""

from __future__ import annotations

import os
import time
from typing import Any

from django.contrib.auth import get_user_model, login, logout
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

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


# The route contract `statekit phoenix` drives (see statekit/phoenix.py); an API for
# scripts, so without CSRF tokens.


def _log_in(request: HttpRequest, name: str) -> None:
    user, _ = get_user_model().objects.get_or_create(username=name)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    request.session["values"] = {}


@csrf_exempt
@require_POST
def api_login(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("user", "").strip()[:64]
    if not name:
        return HttpResponseBadRequest("a name is needed")
    _log_in(request, name)
    return JsonResponse({"user": name, "pid": os.getpid()})


@csrf_exempt
def api_session(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        values = dict(request.session.get("values", {}))
        values[request.POST["key"]] = request.POST["value"]
        request.session["values"] = values
        return JsonResponse({"ok": True, "pid": os.getpid()})
    user = request.user.get_username() if request.user.is_authenticated else None
    return JsonResponse({"user": user, "values": request.session.get("values", {}), "pid": os.getpid()})


@csrf_exempt
@require_POST
def api_upload(request: HttpRequest) -> HttpResponse:
    file = request.FILES.get("photo")
    if not request.user.is_authenticated or file is None:
        return HttpResponseBadRequest("log in and send a photo")
    photo = Photo(owner=request.user, name=(file.name or "photo")[:255])
    try:
        photo.file.save(file.name or "photo", file, save=False)
    except BlobError as e:
        return HttpResponse(f"not stored: {e}", status=413 if isinstance(e, BlobTooLarge) else 415)
    photo.save()
    return JsonResponse({"id": photo.file.name, "pid": os.getpid()}, status=201)


@require_GET
def api_photo(request: HttpRequest, key: str) -> HttpResponse:
    return redirect(default_storage.url(key))  # presigned: S3 serves the bytes


@require_GET
def api_shared(request: HttpRequest) -> HttpResponse:
    value = shared_value("users_count")
    return JsonResponse({"name": "users_count", "value": value.get(), "version": value.updated_at or 0.0,
                         "pid": os.getpid()})
