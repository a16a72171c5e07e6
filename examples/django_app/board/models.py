from __future__ import annotations

from django.conf import settings
from django.db import models


class Photo(models.Model):
    """A user's photo. ``file`` is stored by STORAGES["default"] (the blob store):
    its name is a generated key, never the uploaded filename."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="photos")
    file = models.FileField(upload_to="photos")
    name = models.CharField(max_length=255)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
