"""HTTP(S) inputs: fetched only from allowed hosts, bounded in bytes and time.

A URL that cannot be fetched raises :class:`InputError` with a stable kind (``disallowed_host``,
``http_error``, ``http_timeout``, ``file_too_large``, ``unknown_scheme``): it becomes that item's
error record.
"""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from workers.settings import get_settings


class InputError(Exception):
    """An input that cannot be staged: ``kind: message``."""

    def __init__(self, kind, msg):
        super().__init__(f"{kind}: {msg}")


def check_url(url: str) -> None:
    """Only http(s), only hosts in ITX_HTTP_ALLOW_HOSTS, no credentials in the URL."""
    u = urlparse(url)
    if u.scheme not in ("http", "https"):
        raise InputError("unknown_scheme", f"cannot fetch {u.scheme}:// URLs")
    if "@" in u.netloc:
        raise InputError("disallowed_host", "URLs with credentials in them are not fetched")
    host = (u.hostname or "").lower()
    if host not in {h.lower() for h in get_settings().http_allow_hosts}:
        raise InputError("disallowed_host", f"host {host!r} is not in ITX_HTTP_ALLOW_HOSTS")


class _AllowedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed host: an allowed server cannot send us elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_http(url: str) -> bytes:
    """GET an allowed URL: at most ITX_HTTP_MAX_BYTES, within ITX_HTTP_TIMEOUT_S in all."""
    s = get_settings()
    check_url(url)
    limit, deadline = s.http_max_bytes, time.monotonic() + s.http_timeout_s
    opener = urllib.request.build_opener(_AllowedRedirects)
    req = urllib.request.Request(url, headers={"User-Agent": "itx"})
    too_large = InputError("file_too_large", f"{url} is over the limit of {limit} bytes")
    try:
        with opener.open(req, timeout=s.http_timeout_s) as r:
            size = r.headers.get("Content-Length", "")
            if size.isdigit() and int(size) > limit:
                raise too_large
            parts, n = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise InputError("http_timeout", f"{url} took over {s.http_timeout_s} s")
                b = r.read1(65536)
                if not b:
                    return b"".join(parts)
                parts.append(b)
                n += len(b)
                if n > limit:
                    raise too_large
    except urllib.error.HTTPError as e:
        raise InputError("http_error", f"{url}: HTTP {e.code} {e.reason}") from None
    except TimeoutError:
        raise InputError("http_timeout", f"{url}: no answer within {s.http_timeout_s} s") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise InputError("http_timeout", f"{url}: no answer within {s.http_timeout_s} s") from None
        raise InputError("http_error", f"{url}: {e.reason}") from None
    except OSError as e:  # connection reset, refused while reading
        raise InputError("http_error", f"{url}: {e}") from None


