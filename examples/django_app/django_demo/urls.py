from __future__ import annotations

from board import views
from django.urls import path

from django_statekit.storage import serve_blob

urlpatterns = [
    # the photos of a file:// store (statekit dev --blobs-dir DIR); S3 URLs are presigned
    path("_statekit/blobs/<path:key>", serve_blob, name="statekit_blob"),
    path("", views.index, name="index"),
    path("login", views.login_view, name="login"),
    path("logout", views.logout_view, name="logout"),
    path("photos", views.upload, name="upload"),
    path("api/login", views.api_login),
    path("api/session", views.api_session),
    path("api/photos", views.api_upload),
    path("api/photos/<path:key>", views.api_photo),
    path("api/shared", views.api_shared),
]
