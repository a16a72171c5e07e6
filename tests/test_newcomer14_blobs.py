"""Blob and URL errors a newcomer met, each failing before its fix:

* ``s3://`` without AWS credentials: every upload was a ``BackendUnavailable`` (503
  "try again") whose message said the outcome was unknown and the delete failed,
  though botocore refused to sign and nothing was sent; ``/readyz`` said
  ``NoCredentialsError``, ``url()`` raised it raw, and an unknown ``?profile=`` was a
  raw ``ProfileNotFound`` (``/readyz`` ignored the profile);
* a missing bucket: ``/readyz`` said "ClientError ... (404) HeadBucket: Not Found",
  a put was a ``BlobError`` (a 500) and ``open()`` a ``BlobNotFound`` (a 404);
* a ``file://`` root that is a regular file was "does not exist (is the volume
  mounted?)";
* a blobs URL without a scheme was shown the example ``redis://127.0.0.1:6379/0``;
* an unknown option's error listed options the URL's scheme then refuses.
"""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from statekit.blobs import open_blob_store
from statekit.config import parse_url
from statekit.errors import BackendUnavailable, BlobNotFound, ConfigError
from statekit.lifecycle import DrainState, Lifecycle, s3_check

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
MISSING_KEY = "2026/01/01/" + "a" * 32 + ".png"


def _readiness(url: str) -> str:
    """What ``/readyz`` says of the blob store at *url*."""
    lc = Lifecycle(checks={"blobs": s3_check(url)}, budget=10.0, cache_ttl=0, drain=DrainState())
    status, body = lc.readiness()
    assert status == 503, body
    return str(body["checks"]["blobs"])


@pytest.fixture
def no_credentials(s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """*s3_url* without its key and secret, in an environment that has none either."""
    parts = urlsplit(s3_url)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = parse_qs(parts.query)["endpoint_url"][0]
    return f"s3://{parts.hostname}?endpoint_url={endpoint}&region=us-east-1"


def _says_credentials(e: BaseException) -> None:
    text = str(e)
    assert isinstance(e, ConfigError) and not isinstance(e, BackendUnavailable), repr(e)
    assert "outcome unknown" not in text, text
    assert "credentials" in text and "?profile=" in text and "AWS_ACCESS_KEY_ID" in text, text


@pytest.mark.s3
@pytest.mark.parametrize("size", [len(PNG), 6 * 2**20], ids=["one-put", "multipart"])
def test_s3_without_credentials_is_a_config_error_not_an_outage(no_credentials: str, size: int) -> None:
    """botocore refuses to sign: nothing is sent. Configuration (fix the URL or the
    environment), not a 503 'try again' with 'outcome unknown: the blob may exist'."""
    store = open_blob_store(no_credentials)
    try:
        with pytest.raises(ConfigError) as e:
            store.put(io.BytesIO(PNG + b"\0" * (size - len(PNG))), filename="a.png")
        _says_credentials(e.value)
        for call in (lambda: store.open(MISSING_KEY), lambda: list(store.list()),
                     lambda: store.url(MISSING_KEY)):
            with pytest.raises(ConfigError) as e:
                call()
            _says_credentials(e.value)
    finally:
        store.close()


@pytest.mark.s3
def test_s3_readiness_without_credentials_says_so(no_credentials: str) -> None:
    said = _readiness(no_credentials)  # its first 200 characters: the fix among them
    assert said.startswith("ConfigError: ") and "credentials" in said and "?profile=" in said, said
    assert "AWS_ACCESS_KEY_ID" in said and "outcome unknown" not in said, said


@pytest.mark.s3
def test_s3_unknown_profile_is_a_config_error_for_the_store_and_readiness(no_credentials: str) -> None:
    url = no_credentials + "&profile=nosuchprofile"
    with pytest.raises(ConfigError, match="nosuchprofile"):
        open_blob_store(url)
    said = _readiness(url)
    assert said.startswith("ConfigError: ") and "nosuchprofile" in said, said


@pytest.mark.s3
def test_s3_missing_bucket_is_a_config_error_naming_it(s3_url: str) -> None:
    """NoSuchBucket is configuration, not an outage nor a missing blob: put, open,
    stat, delete, list and the readiness check say which bucket is missing."""
    url = s3_url.replace("@t-", "@nobucket-", 1)
    assert url != s3_url
    bucket = urlsplit(url).hostname
    store = open_blob_store(url)
    try:
        calls = {"put": lambda: store.put(PNG, filename="a.png"), "open": lambda: store.open(MISSING_KEY),
                 "stat": lambda: store.stat(MISSING_KEY), "delete": lambda: store.delete(MISSING_KEY),
                 "list": lambda: list(store.list())}
        for name, call in calls.items():
            with pytest.raises(ConfigError) as e:
                call()
            assert f"bucket {bucket!r} does not exist" in str(e.value), (name, str(e.value))
    finally:
        store.close()
    said = _readiness(url)
    assert said.startswith("ConfigError: ") and f"bucket {bucket!r} does not exist" in said, said


@pytest.mark.s3
def test_s3_missing_blob_in_an_existing_bucket_is_still_not_found(s3_url: str) -> None:
    store = open_blob_store(s3_url)
    try:
        for _ in range(2):  # the bucket is checked once; the second miss is one HEAD
            with pytest.raises(BlobNotFound):
                store.open(MISSING_KEY)
        assert store.delete(MISSING_KEY) is False
        assert not store.exists(MISSING_KEY)
    finally:
        store.close()


def test_file_store_root_that_is_a_file_is_not_called_missing(tmp_path: Path) -> None:
    (tmp_path / "root").write_text("a file, not a directory")
    for url in (f"file://{tmp_path}/root", f"file://{tmp_path}/root?create=1"):
        with pytest.raises(ConfigError) as e:
            open_blob_store(url)
        assert "does not exist" not in str(e.value) and "not a directory" in str(e.value), str(e.value)


@pytest.mark.parametrize("url", ["/srv/uploads", "file:/srv/uploads", "srv/uploads"])
def test_a_blobs_url_without_a_scheme_is_shown_a_blob_url(url: str) -> None:
    from statekit.config import Settings

    with pytest.raises(ConfigError) as e:
        open_blob_store(url)
    said = str(e.value)
    assert "file:///" in said and "s3://" in said and "redis://" not in said, said
    with pytest.raises(ConfigError) as e:
        Settings.from_env({"STATEKIT_BLOBS_URL": url})
    assert "file:///" in str(e.value) and "redis://" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match=r"redis://127\.0\.0\.1:6379/0"):  # where Redis is meant
        parse_url("127.0.0.1:6379", kinds=("redis", "memory"))


def test_unknown_option_lists_only_options_the_scheme_takes() -> None:
    refused_by_redis = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "sentinel_password")
    with pytest.raises(ConfigError) as e:
        parse_url("redis://127.0.0.1:6379/0?socket_timout=5")
    assert "socket_timeout" in str(e.value)
    for refused in refused_by_redis:  # 'needs a rediss:// URL', 'needs a redis+sentinel:// URL'
        assert refused not in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_url("rediss://127.0.0.1:6379/0?socket_timout=5")
    assert "ssl_ca_certs" in str(e.value) and "sentinel_password" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_url("redis+cluster://127.0.0.1:7000?socket_timout=5")
    assert "health_check_interval" not in str(e.value) and "socket_timeout" in str(e.value), str(e.value)
    for option in refused_by_redis:  # each listed option is one the scheme takes
        with pytest.raises(ConfigError, match="needs a"):
            parse_url(f"redis://127.0.0.1:6379/0?{option}=x")
