"""TLS options for an ``amqps://`` broker, and the warning for unverified Redis TLS.

Kept apart from ``workers.app`` (which calls both) so the Celery app stays small.
"""
from __future__ import annotations

import logging
import ssl

log = logging.getLogger("itx.tls")


def amqp_tls(s) -> dict:
    """``broker_use_ssl`` for amqps:// (py-amqp): the server's certificate and host name are
    verified against ITX_AMQP_SSL_CA_CERTS (default: the system's CAs); a client certificate
    from ITX_AMQP_SSL_CERTFILE/ITX_AMQP_SSL_KEYFILE when the server asks for one."""
    opts = {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None,  # None: the URL's host
            "ca_certs": s.amqp_ssl_ca_certs or None, "certfile": s.amqp_ssl_certfile or None,
            "keyfile": s.amqp_ssl_keyfile or None}
    return {k: v for k, v in opts.items() if v is not None or k == "server_hostname"}


def warn_unverified(s) -> None:
    """ITX_REDIS_SSL_CERT_REQS=none turns certificate checks off: anyone on the path can read
    the broker's traffic, passwords included. Say so, every time a process configures it."""
    if s.redis_ssl_cert_reqs == "none":
        log.warning("ITX_REDIS_SSL_CERT_REQS=none: the Redis server's certificate is not "
                    "verified; anyone on the network path can impersonate it and read the "
                    "password. Use required with ITX_REDIS_SSL_CA_CERTS.")
