"""The Django example's own tests (``python manage.py test``): every piece of state
is outside the process. Run by the statekit suite (tests/test_examples_django.py)
against its private Redis and S3 endpoint."""

from __future__ import annotations

import hashlib
import random
import re

from django.conf import settings
from django.core.cache import cache
from django.core.files.storage import default_storage, storages
from django.test import Client, TestCase
from django.utils.module_loading import import_string
from django_demo.jobs import broadcaster

from django_statekit.broadcast import shared_value
from statekit.phoenix import make_png

from .models import Photo


class StatelessTests(TestCase):
    def setUp(self) -> None:
        cache.clear()

    def test_session_lives_in_the_session_store(self) -> None:
        client = Client()
        client.post("/login", {"user": "alice"})
        client.get("/")
        page = client.get("/").content.decode()
        self.assertIn('id="user">alice<', page)
        self.assertIn('id="visits">2<', page)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        # another process (a fresh SessionStore, nothing shared in memory) sees the same session
        store = import_string(settings.SESSION_ENGINE + ".SessionStore")(session_key=cookie)
        self.assertEqual(store["visits"], 2)
        self.assertTrue(store["_auth_user_id"])

    def test_login_rotates_the_session_id(self) -> None:
        client = Client()
        client.get("/")
        before = client.cookies[settings.SESSION_COOKIE_NAME].value
        client.post("/login", {"user": "bob"})
        self.assertNotEqual(client.cookies[settings.SESSION_COOKIE_NAME].value, before)

    def test_upload_goes_to_the_blob_store(self) -> None:
        client = Client()
        client.post("/login", {"user": "carol"})
        png = make_png(random.Random(3))
        client.post("/photos", {"photo": _upload("beach.png", png)})
        photo = Photo.objects.get(owner__username="carol")
        self.assertNotIn("beach", photo.file.name)  # a generated key, not the user's filename
        self.assertEqual(type(storages["default"]).__name__, "BlobStorage")
        with default_storage.open(photo.file.name) as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(png).hexdigest())
        page = client.get("/").content.decode()
        urls = re.findall(r'<img src="([^"]+)" alt="beach.png">', page)
        self.assertEqual(len(urls), 1)
        self.assertIn(photo.file.name, urls[0])
        self.assertIn("Signature=", urls[0])  # presigned: served by S3, not by a worker

    def test_non_image_is_refused_and_not_stored(self) -> None:
        client = Client()
        client.post("/login", {"user": "dave"})
        response = client.post("/photos", {"photo": _upload("x.png", b"MZ\x90\x00 not a picture")})
        self.assertEqual(response.status_code, 415)
        self.assertFalse(Photo.objects.exists())

    def test_report_is_computed_once_and_shared(self) -> None:
        first = Client().get("/").content.decode()
        origin = re.search(r"computed by PID (\d+)", first)
        assert origin is not None
        self.assertEqual(cache.get("board:report")["computed_by"], int(origin.group(1)))
        # a second visitor gets the cached report, not a new computation
        cache.set("board:report", {**cache.get("board:report"), "computed_by": 4242}, 30)
        self.assertIn("computed by PID 4242", Client().get("/").content.decode())

    def test_users_count_is_a_shared_value(self) -> None:
        broadcaster.publish("users_count", 1234)
        value = shared_value("users_count")
        value.refresh()
        self.assertEqual(value.get(), 1234)
        self.assertIn('id="users-count">1234<', Client().get("/").content.decode())

    def test_health_endpoints(self) -> None:
        from django_demo.wsgi import application

        statuses = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
            statuses.append(status)

        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "SERVER_NAME": "t", "SERVER_PORT": "80",
                   "wsgi.url_scheme": "http", "wsgi.input": __import__("io").BytesIO(), "QUERY_STRING": ""}
        b"".join(application(environ, start_response))
        self.assertTrue(statuses[0].startswith("200"))


def _upload(name: str, data: bytes) -> object:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")
