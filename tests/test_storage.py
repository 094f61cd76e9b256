"""The blob store over file:// and s3:// (moto over real HTTP, through AWS_ENDPOINT_URL)."""
import os
import urllib.request

import boto3
import pytest

from tests.s3fixture import moto_server, s3_env
from workers.storage import (FileStore, NotFoundError, OutsideStoreError, S3Store, content_key,
                             open_store)


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as url, s3_env(url):
        yield url


def exercise(st, other_uri: str):
    uri = st.put("a/b/c.txt", b"hello")
    assert uri == st.url("a/b/c.txt") and uri.startswith(st.uri)
    assert st.get("a/b/c.txt") == b"hello" and st.get(uri) == b"hello"
    assert st.exists("a/b/c.txt") and not st.exists("a/b/nope.txt")
    st.put("a/b/d.txt", b"x")
    st.put("a/e.txt", b"y")
    st.put("z.txt", b"z")
    assert list(st.list("a/")) == ["a/b/c.txt", "a/b/d.txt", "a/e.txt"]
    assert list(st.list("a/b/")) == ["a/b/c.txt", "a/b/d.txt"]
    st.put("a/b/c.txt", b"again")  # deterministic keys: overwrite, never a second object
    assert st.get(uri) == b"again" and len(list(st.list("a/b/"))) == 2
    st.put_json("r/1.json", {"k": "ü"})
    assert st.get_json("r/1.json") == {"k": "ü"}
    u1, new1 = st.put_content(b"img-bytes", ".JPG")
    u2, new2 = st.put_content(b"img-bytes", "jpg")
    assert u1 == u2 and new1 and not new2 and u1.endswith(content_key(b"img-bytes", "jpg"))
    with pytest.raises(NotFoundError):
        st.get("missing.bin")
    for bad in ("../escape.txt", "a/../../escape.txt", other_uri, "ftp://host/x.jpg",
                "http://127.0.0.1/x.jpg"):
        with pytest.raises(OutsideStoreError):
            st.get(bad)
    st.delete("z.txt")
    assert not st.exists("z.txt")


def test_file_store(tmp_path):
    st = open_store((tmp_path / "store").as_uri())
    assert isinstance(st, FileStore)
    exercise(st, (tmp_path / "elsewhere.txt").as_uri())
    (tmp_path / "secret.txt").write_text("no")
    (tmp_path / "store" / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(OutsideStoreError):
        st.get("link.txt")
    with pytest.raises(OutsideStoreError):
        st.get("/etc/passwd")


def test_relative_file_store_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    st = open_store("file://./rel-store")
    assert st.uri == (tmp_path / "rel-store").as_uri()


def test_s3_store_over_http(endpoint):
    assert os.environ["AWS_ENDPOINT_URL"] == endpoint
    boto3.client("s3").create_bucket(Bucket="store-test")
    boto3.client("s3").create_bucket(Bucket="other-bucket")
    st = open_store("s3://store-test/prefix")
    assert isinstance(st, S3Store)
    exercise(st, "s3://other-bucket/prefix/a/b/c.txt")
    with pytest.raises(OutsideStoreError):
        st.get("s3://store-test/not-the-prefix/a/b/c.txt")
    # objects really live under the prefix, reachable over HTTP with a presigned URL
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="store-test")["Contents"]]
    assert "prefix/a/b/c.txt" in keys
    with urllib.request.urlopen(st.presign("a/b/c.txt"), timeout=10) as r:
        assert r.read() == b"again"


def test_s3_staging_puts_small_inputs_in_one_conditional_request(endpoint):
    """An input up to CONDITIONAL_PUT_BYTES is staged with one PUT (If-None-Match: *), which
    never replaces an object already there; a larger one is HEADed first."""
    from tests.faultproxy import FaultProxy
    from workers.storage import S3Store

    boto3.client("s3").create_bucket(Bucket="staging-test")
    with FaultProxy(endpoint) as proxy:
        st = S3Store("s3://staging-test/p", client=boto3.client("s3", endpoint_url=proxy.url))
        uri, new = st.put_content(b"small image", "png")
        assert new and st.get(uri) == b"small image"
        assert [m for m, _ in proxy.requests] == ["PUT", "GET"]
        proxy.reset_counts()
        assert st.put_content(b"small image", "png") == (uri, False)
        assert [m for m, _ in proxy.requests] == ["PUT"]  # refused: 412
        st.CONDITIONAL_PUT_BYTES = 4
        proxy.reset_counts()
        big, new = st.put_content(b"a larger image", "png")
        assert new and [m for m, _ in proxy.requests] == ["HEAD", "PUT"]
        proxy.reset_counts()
        assert st.put_content(b"a larger image", "png") == (big, False)
        assert [m for m, _ in proxy.requests] == ["HEAD"]


def test_unsupported_store_uri():
    with pytest.raises(ValueError, match="unsupported store"):
        open_store("gs://bucket/x")
    with pytest.raises(ValueError, match="needs a bucket"):
        S3Store("s3:///nobucket")
