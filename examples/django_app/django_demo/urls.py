from __future__ import annotations

from board import views
from django.urls import path

urlpatterns = [
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
