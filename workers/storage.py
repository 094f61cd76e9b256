"""Blob store over ``file://`` and ``s3://`` URIs.

The store is the durable truth: inputs live under content-addressed keys
(``inputs/<sha256>.<ext>``), outputs and result records under deterministic keys
(``runs/<batch>/…``), so a re-run overwrites the same objects and never adds new ones.

Workers only read inside the configured store: a URI outside its root (``..``,
symlinks that escape, another bucket, another scheme) raises ``OutsideStoreError``
before any read. S3 goes through boto3, which honours ``AWS_ENDPOINT_URL`` (MinIO,
moto, any S3-compatible store) and retries transient errors with its own backoff.
"""
from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse


class StoreError(Exception):
    """Base class for store errors."""


class OutsideStoreError(StoreError):
    """A URI points outside the configured store; nothing was read."""


class NotFoundError(StoreError):
    """The object does not exist."""


class TransientStoreError(StoreError):
    """A store request failed in a way worth retrying (throttling, 5xx, timeouts)."""


class TooLargeError(StoreError):
    """The object is larger than the caller's limit; it was not read."""


# botocore's retries (ResponseMetadata.RetryAttempts), counted per process: a prefork pool
# process runs one task at a time, so a task's count is the difference across its run
_RETRIES = [0]
_RETRIES_LOCK = threading.Lock()


def store_retries() -> int:
    """How many times this process's S3 requests were retried by botocore so far."""
    return _RETRIES[0]


def _count_retries(n: int) -> None:
    if n:
        with _RETRIES_LOCK:
            _RETRIES[0] += n


def content_key(data: bytes, ext: str, prefix: str = "inputs") -> str:
    """Content-addressed key: the same bytes always land on the same key."""
    ext = ext.lower().lstrip(".") or "bin"
    return f"{prefix}/{hashlib.sha256(data).hexdigest()[:32]}.{ext}"


def _clean_key(key: str) -> str:
    key = key.lstrip("/")
    # a ".." segment, as PurePosixPath(key).parts would show it (empty and "." segments drop)
    if ".." in key.split("/") or "\x00" in key:
        raise OutsideStoreError(f"key {key!r} escapes the store")
    return key


# what urlparse would treat specially in a URI (query, fragment; tab and newlines it removes)
_URL_SPECIAL = re.compile(r"[?#\t\r\n]")


class Store:
    """Common interface; ``open_store(uri)`` returns a FileStore or an S3Store."""

    uri: str

    # --- keys and URIs ---------------------------------------------------
    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{_clean_key(key)}"

    def key_of(self, uri_or_key: str) -> str:
        """The key for a URI inside this store; a bare key is taken as is."""
        raise NotImplementedError

    # --- bytes ------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        raise NotImplementedError

    def put_if_absent(self, key: str, data: bytes, content_type: str | None = None) -> bool:
        """Create ``key`` only if no object is there, atomically (one of racing writers wins);
        True if this call created it."""
        raise NotImplementedError

    def get(self, uri_or_key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; ``TooLargeError`` (before reading it) if over ``max_bytes``."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise ``StoreError`` (one line: what is down, what to do) if the store is unusable."""

    def exists(self, uri_or_key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, in lexical order."""
        raise NotImplementedError

    def delete(self, uri_or_key: str) -> None:
        raise NotImplementedError

    def dirs(self, prefix: str = "") -> Iterator[str]:
        """The "folders" right under ``prefix`` (which ends in ``/``), e.g. batch names under
        ``runs/``, without listing what they hold."""
        raise NotImplementedError

    def sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """``(key, bytes)`` under ``prefix``, in lexical order."""
        raise NotImplementedError

    def presign(self, uri_or_key: str, expires: int = 7 * 24 * 3600) -> str:
        return self.url(self.key_of(uri_or_key))

    # --- conveniences -----------------------------------------------------
    def put_json(self, key: str, obj) -> str:
        return self.put(key, json.dumps(obj, ensure_ascii=False, sort_keys=False).encode(),
                        "application/json")

    def put_json_if_absent(self, key: str, obj) -> bool:
        return self.put_if_absent(key, json.dumps(obj, ensure_ascii=False).encode(),
                                  "application/json")

    def get_json(self, uri_or_key: str):
        return json.loads(self.get(uri_or_key))

    def put_image(self, key: str, image, format: str = "PNG") -> str:
        buf = io.BytesIO()
        image.save(buf, format=format)
        return self.put(key, buf.getvalue(), mimetypes.types_map.get("." + format.lower()))

    def put_content(self, data: bytes, ext: str, prefix: str = "inputs") -> tuple[str, bool]:
        """Store bytes under their content key; returns (uri, written) — skips existing objects."""
        key = content_key(data, ext, prefix)
        if self.exists(key):
            return self.url(key), False
        return self.put(key, data), True


class FileStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, uri_or_key: str) -> Path:
        key = self.key_of(uri_or_key)
        p = (self.root / key)
        real = p.resolve()
        if real != self.root and self.root not in real.parents:
            raise OutsideStoreError(f"{uri_or_key!r} resolves outside the store {self.uri}")
        return p

    def key_of(self, uri_or_key: str) -> str:
        u = urlparse(uri_or_key)
        if u.scheme == "file":
            path = Path(unquote(u.path))
            absolute = Path(os.path.normpath(path))
            if absolute != self.root and self.root not in absolute.parents:
                raise OutsideStoreError(f"{uri_or_key!r} is outside the store {self.uri}")
            return _clean_key(absolute.relative_to(self.root).as_posix())
        if u.scheme and len(u.scheme) > 1:  # not a Windows drive letter
            raise OutsideStoreError(
                f"{uri_or_key!r}: scheme {u.scheme!r} is not this store's (file://)")
        if uri_or_key.startswith("/"):
            raise OutsideStoreError(f"{uri_or_key!r} is an absolute path, not a store key")
        return _clean_key(uri_or_key)

    def put(self, key, data, content_type=None):
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)  # atomic: readers see the old or the new object, never half
        return self.url(self.key_of(key))

    def put_content(self, data: bytes, ext: str, prefix: str = "inputs") -> tuple[str, bool]:
        """As ``Store.put_content``, resolving the path once (staging calls this per item)."""
        key = content_key(data, ext, prefix)
        p = self._path(key)
        if p.is_file():
            return self.url(key), False
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)
        return self.url(key), True

    def put_if_absent(self, key, data, content_type=None):
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, p)  # like O_CREAT|O_EXCL, and readers never see a half-written file
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def check(self):
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the store {self.uri} is not a folder (ITX_STORE)")

    def get(self, uri_or_key, max_bytes=None):
        p = self._path(uri_or_key)
        try:
            if max_bytes is not None and (size := p.stat().st_size) > max_bytes:
                raise TooLargeError(f"{size} bytes is over the limit of {max_bytes}")
            return p.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no object {uri_or_key!r} in {self.uri}") from None
        except IsADirectoryError:
            raise NotFoundError(f"{uri_or_key!r} is a folder, not an object") from None

    def exists(self, uri_or_key):
        return self._path(uri_or_key).is_file()

    def list(self, prefix=""):
        prefix = _clean_key(prefix) if prefix else ""
        base = self.root / prefix
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return

        def walk(d: Path):  # lexical key order, like S3: sort names as keys ("b/" vs "b.txt")
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name + ("/" if e.is_dir(
                    follow_symlinks=False) else ""))
            except FileNotFoundError:
                return
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    yield from walk(Path(e.path))
                elif not (e.name.startswith(".") and e.name.endswith(".tmp")):
                    key = Path(e.path).relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        yield key

        yield from walk(start)

    def delete(self, uri_or_key):
        try:
            self._path(uri_or_key).unlink()
        except FileNotFoundError:
            pass

    def dirs(self, prefix=""):
        d = self.root / _clean_key(prefix) if prefix else self.root
        if d.is_dir():
            yield from sorted(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))

    def sizes(self, prefix=""):
        for key in self.list(prefix):
            try:
                yield key, (self.root / key).stat().st_size
            except FileNotFoundError:
                pass

    def local_path(self, uri_or_key: str) -> Path:
        return self._path(uri_or_key)


def _s3_client():
    import boto3
    from botocore.config import Config

    from workers.settings import get_settings

    s = get_settings()
    cfg = Config(retries={"max_attempts": s.s3_max_attempts, "mode": "standard"},
                 connect_timeout=s.s3_connect_timeout, read_timeout=s.s3_read_timeout,
                 max_pool_connections=32)
    return boto3.session.Session().client("s3", config=cfg)


class S3Store(Store):
    def __init__(self, uri: str, client=None):
        u = urlparse(uri)
        self.bucket = u.netloc
        if not self.bucket:
            raise ValueError(f"{uri!r}: an s3 store needs a bucket, e.g. s3://bucket/prefix")
        self.prefix = u.path.strip("/")
        self.uri = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._own = self.uri + "/"  # a URI of this store starts with it
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = _s3_client()
        return self._client

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def key_of(self, uri_or_key):
        if type(uri_or_key) is str and uri_or_key.startswith(self._own) \
                and not _URL_SPECIAL.search(uri_or_key):
            # the common case, without urlparse: what the general path below gives for it
            return _clean_key(uri_or_key[len(self._own):])
        u = urlparse(uri_or_key)
        if u.scheme == "s3":
            if u.netloc != self.bucket:
                raise OutsideStoreError(
                    f"{uri_or_key!r} is in bucket {u.netloc!r}, not this store's {self.bucket!r}")
            path = u.path.lstrip("/")
            if self.prefix:
                if not path.startswith(self.prefix + "/"):
                    raise OutsideStoreError(f"{uri_or_key!r} is outside the store {self.uri}")
                path = path[len(self.prefix) + 1:]
            return _clean_key(path)
        if u.scheme:
            raise OutsideStoreError(f"{uri_or_key!r}: scheme {u.scheme!r} is not this store's (s3://)")
        return _clean_key(uri_or_key)

    def _call(self, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            r = fn(**kw)
            _count_retries(r.get("ResponseMetadata", {}).get("RetryAttempts", 0))
            return r
        except ClientError as e:
            _count_retries(e.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFoundError(f"no object {kw.get('Key')!r} in s3://{self.bucket}") from None
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                raise TransientStoreError(f"S3 {code or status}: {e}") from e
            raise StoreError(f"S3 {code or status}: {e}") from e
        except BotoCoreError as e:
            if isinstance(e, (HTTPClientError, BotoConnectionError)):  # retried to the limit
                _count_retries(self.client.meta.config.retries.get("max_attempts", 1) - 1)
            raise TransientStoreError(f"S3 request failed: {e}") from e

    def put(self, key, data, content_type=None):
        key = self.key_of(key)
        extra = {"ContentType": content_type} if content_type else {}
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._full(key), Body=data, **extra)
        return self.url(key)

    # staging: an input up to this size goes up in one conditional PUT (a new image costs one
    # request instead of HEAD + PUT; one already there is refused, 412, and not replaced); a
    # larger one is asked for first, so submitting it again does not upload it again
    CONDITIONAL_PUT_BYTES = 1 << 20

    def put_content(self, data: bytes, ext: str, prefix: str = "inputs") -> tuple[str, bool]:
        if len(data) > self.CONDITIONAL_PUT_BYTES:
            return super().put_content(data, ext, prefix)
        key = content_key(data, ext, prefix)
        return self.url(key), self.put_if_absent(key, data)

    def put_if_absent(self, key, data, content_type=None):
        key = self.key_of(key)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            self._call(self.client.put_object, Bucket=self.bucket, Key=self._full(key),
                       Body=data, IfNoneMatch="*", **extra)
            return True
        except StoreError as e:  # 412: it exists; 409: a concurrent conditional write won
            if "PreconditionFailed" in str(e) or "ConditionalRequestConflict" in str(e) \
                    or "412" in str(e) or "409" in str(e):
                return False
            raise

    def check(self):
        from botocore.exceptions import BotoCoreError, ClientError

        endpoint = self.client.meta.endpoint_url
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(f"bucket {self.bucket!r} does not exist at {endpoint}: create "
                                 f"it, or point ITX_STORE at another") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise StoreError(f"access to bucket {self.bucket!r} at {endpoint} is denied: "
                                 f"check the credentials") from None
            raise StoreError(f"S3 at {endpoint}: {code}") from None
        except BotoCoreError as e:
            raise StoreError(f"cannot reach S3 at {endpoint} (AWS_ENDPOINT_URL): "
                             f"{type(e).__name__}; is it running?") from None

    def get(self, uri_or_key, max_bytes=None):
        key = self.key_of(uri_or_key)
        r = self._call(self.client.get_object, Bucket=self.bucket, Key=self._full(key))
        size = r.get("ContentLength")
        if max_bytes is not None and size is not None and size > max_bytes:
            r["Body"].close()
            raise TooLargeError(f"{size} bytes is over the limit of {max_bytes}")
        try:
            if max_bytes is not None:  # bounded even when the length was not declared
                data = r["Body"].read(max_bytes + 1)
                if len(data) > max_bytes:
                    r["Body"].close()
                    raise TooLargeError(f"over {max_bytes} bytes, the limit")
                return data
            return r["Body"].read()
        except Exception as e:  # the connection broke while streaming the body
            from botocore.exceptions import BotoCoreError

            if isinstance(e, (BotoCoreError, OSError)):
                raise TransientStoreError(f"S3 read of {key!r} failed: {e}") from e
            raise

    def exists(self, uri_or_key):
        key = self.key_of(uri_or_key)
        try:
            self._call(self.client.head_object, Bucket=self.bucket, Key=self._full(key))
            return True
        except NotFoundError:
            return False
        except StoreError as e:
            if "404" in str(e) or "Not Found" in str(e):
                return False
            raise

    def list(self, prefix=""):
        return (key for key, _ in self.sizes(prefix))

    def delete(self, uri_or_key):
        key = self.key_of(uri_or_key)
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._full(key))

    def dirs(self, prefix=""):
        prefix = _clean_key(prefix).rstrip("/") + "/" if prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._full(prefix)
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/"):
            for p in page.get("CommonPrefixes", []):
                yield p["Prefix"][len(full):].rstrip("/")

    def sizes(self, prefix=""):
        prefix = _clean_key(prefix) if prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full(prefix)):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:], obj["Size"]

    def presign(self, uri_or_key, expires=7 * 24 * 3600):
        key = self.key_of(uri_or_key)
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=expires)


_STORES: dict[str, Store] = {}
_STORES_LOCK = threading.Lock()


def open_store(uri: str | None = None) -> Store:
    """The store for ``uri`` (default: ``ITX_STORE``), one instance per URI per process."""
    if uri is None:
        from workers.settings import get_settings

        uri = get_settings().store
    with _STORES_LOCK:
        st = _STORES.get(uri)
        if st is None:
            u = urlparse(uri)
            if u.scheme == "s3":
                st = S3Store(uri)
            elif u.scheme == "file":
                # file://./rel and file:///abs both work
                path = unquote(u.netloc + u.path) if u.netloc in (".", "..") else unquote(u.path)
                st = FileStore(path)
            elif not u.scheme or len(u.scheme) == 1:
                st = FileStore(uri)
            else:
                raise ValueError(f"unsupported store {uri!r}: use file:///path or s3://bucket/prefix")
            _STORES[uri] = st
        return st
