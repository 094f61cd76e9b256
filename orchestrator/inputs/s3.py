"""``s3://`` prefixes: their images, shards and Parquet files; and reading S3 objects as
streams (shards) or seekable files (Parquet) without holding them in memory."""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

from orchestrator.inputs.item import InputItem, is_image_name


def split(uri: str) -> tuple[str, str]:
    u = urlparse(uri)
    return u.netloc, u.path.lstrip("/")


def _store(bucket: str):
    from workers.storage import S3Store

    return S3Store(f"s3://{bucket}")


def iter_s3_prefix(uri: str, dataset: Callable[[str], Iterator[InputItem] | None]
                   ) -> Iterator[InputItem]:
    """Every image object under ``uri``, and for a shard or table key what ``dataset(uri)``
    yields (None: not a dataset file)."""
    from workers.storage import StoreError

    bucket, prefix = split(uri)
    try:
        for key in _store(bucket).list(prefix):
            obj = f"s3://{bucket}/{key}"
            if is_image_name(key):
                yield InputItem(source=obj, uri=obj)
            else:
                sub = dataset(obj)
                if sub is not None:
                    yield from sub
    except StoreError as e:
        yield InputItem(source=uri, error=f"store_error: cannot list {uri}: {e}")


def open_stream(uri: str):
    """The object's body as a forward-only stream (one GET, read as it is consumed)."""
    bucket, key = split(uri)
    st = _store(bucket)
    return st._call(st.client.get_object, Bucket=bucket, Key=key)["Body"]


class RangeReader(io.RawIOBase):
    """A seekable read-only file over an S3 object: each read is one ranged GET, so pyarrow
    reads a Parquet footer and then one row group at a time, never the whole object."""

    def __init__(self, uri: str):
        self.bucket, self.key = split(uri)
        self.st = _store(self.bucket)
        head = self.st._call(self.st.client.head_object, Bucket=self.bucket, Key=self.key)
        self.size = int(head["ContentLength"])
        self.pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b):
        if self.pos >= self.size or not len(b):
            return 0
        end = min(self.size, self.pos + len(b)) - 1
        r = self.st._call(self.st.client.get_object, Bucket=self.bucket, Key=self.key,
                          Range=f"bytes={self.pos}-{end}")
        data = r["Body"].read()
        n = len(data)
        b[:n] = data
        self.pos += n
        return n
