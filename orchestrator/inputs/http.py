"""HTTP(S) inputs: fetched only from allowed origins, bounded in bytes and time.

A URL that cannot be fetched raises :class:`InputError` with a stable kind (``disallowed_host``,
``private_address``, ``insecure_redirect``, ``http_error``, ``http_timeout``,
``file_too_large``, ``unknown_scheme``): it becomes that item's error record.

Allowed: a URL whose scheme, host and port match an ``ITX_HTTP_ALLOW_HOSTS`` entry
(``https://host``, ``http://host:8080``; a bare ``host`` means http and https on their default
ports) and whose host resolves to public addresses only (``ITX_HTTP_ALLOW_PRIVATE`` lets
loopback, private and link-local ones through). Query strings (signed URLs) are kept out of
records, ``batch.json`` and error messages: :func:`redact_url`.
"""
from __future__ import annotations

import ipaddress
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse, urlunparse

from workers.settings import get_settings


class InputError(Exception):
    """An input that cannot be staged: ``kind: message``."""

    def __init__(self, kind, msg):
        super().__init__(f"{kind}: {msg}")


_PORTS = {"http": 80, "https": 443}


def redact_url(url: str | None) -> str | None:
    """An http(s) URL without its query, fragment and credentials (anything else as it is)."""
    if not url or not url.lower().startswith(("http://", "https://")):
        return url
    try:
        u = urlparse(url)
        netloc = u.netloc.rsplit("@", 1)[-1]
        return urlunparse((u.scheme, netloc, u.path, "", "", ""))
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]


def redact_text(text: str, url: str | None) -> str:
    """``text`` with ``url`` (as given) replaced by its redacted form."""
    red = redact_url(url)
    return text.replace(url, red) if url and red != url else text


def _origins() -> set[tuple[str, str, int]]:
    out = set()
    for entry in get_settings().http_allow_hosts:
        e = entry.strip().lower()
        if "://" in e:
            u = urlparse(e)
            out.add((u.scheme, u.hostname or "", u.port or _PORTS.get(u.scheme, 0)))
        else:
            out |= {(sch, e, port) for sch, port in _PORTS.items()}
    return out


def _check_address(host: str, port: int) -> None:
    if get_settings().http_allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InputError("http_error", f"cannot resolve {host!r}: {e.strerror}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not addr.is_global:
            raise InputError("private_address", f"{host!r} resolves to {addr}, which is not a "
                             f"public address (ITX_HTTP_ALLOW_PRIVATE)")


def check_url(url: str) -> None:
    """Only http(s), only allowed (scheme, host, port), no credentials in the URL, and a host
    that resolves to public addresses only."""
    u = urlparse(url)
    if u.scheme not in ("http", "https"):
        raise InputError("unknown_scheme", f"cannot fetch {u.scheme}:// URLs")
    if "@" in u.netloc:
        raise InputError("disallowed_host", "URLs with credentials in them are not fetched")
    host = (u.hostname or "").lower()
    try:
        port = u.port or _PORTS[u.scheme]
    except ValueError:
        raise InputError("disallowed_host", f"bad port in {redact_url(url)!r}") from None
    if (u.scheme, host, port) not in _origins():
        raise InputError("disallowed_host", f"{u.scheme}://{host}:{port} is not in "
                         f"ITX_HTTP_ALLOW_HOSTS")
    _check_address(host, port)


class _AllowedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed origin, and never from https down to http: an
    allowed server cannot send us elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if req.full_url.lower().startswith("https:") and newurl.lower().startswith("http:"):
            raise InputError("insecure_redirect", f"{redact_url(req.full_url)} redirects from "
                             f"https to http ({redact_url(newurl)})")
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_http(url: str) -> bytes:
    """GET an allowed URL: at most ITX_HTTP_MAX_BYTES, within ITX_HTTP_TIMEOUT_S in all."""
    s = get_settings()
    check_url(url)
    limit, deadline = s.http_max_bytes, time.monotonic() + s.http_timeout_s
    shown = redact_url(url)  # what messages say: no signed query
    opener = urllib.request.build_opener(_AllowedRedirects)
    req = urllib.request.Request(url, headers={"User-Agent": "itx"})
    too_large = InputError("file_too_large", f"{shown} is over the limit of {limit} bytes")
    try:
        with opener.open(req, timeout=s.http_timeout_s) as r:
            size = r.headers.get("Content-Length", "")
            if size.isdigit() and int(size) > limit:
                raise too_large
            parts, n = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise InputError("http_timeout", f"{shown} took over {s.http_timeout_s} s")
                b = r.read1(65536)
                if not b:
                    return b"".join(parts)
                parts.append(b)
                n += len(b)
                if n > limit:
                    raise too_large
    except urllib.error.HTTPError as e:
        raise InputError("http_error", f"{shown}: HTTP {e.code} {e.reason}") from None
    except TimeoutError:
        raise InputError("http_timeout", f"{shown}: no answer within {s.http_timeout_s} s") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise InputError("http_timeout", f"{shown}: no answer within {s.http_timeout_s} s") from None
        raise InputError("http_error", f"{shown}: {e.reason}") from None
    except OSError as e:  # connection reset, refused while reading
        raise InputError("http_error", f"{shown}: {e}") from None


