"""TLS to a database target, as libpq's sslmode words say: one reading for every protocol.

``prefer`` and ``require`` encrypt without checking the certificate, ``verify-ca`` checks it
against the CA file (or the system's), ``verify-full`` also checks that it names the host.
Whether TLS is asked for at all, and what to do when the target does not offer it, is the
protocol's business (agent/pg/login.py, agent/mysql/login.py).
"""

from __future__ import annotations

import ssl

__all__ = ["TLS_MODES", "target_tls"]

TLS_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


def target_tls(mode: str, cafile: str | None, host: str) -> tuple[ssl.SSLContext, str | None]:
    """The context for a TLS ``mode`` other than disable, and the server name to check
    (None: the name is not checked)."""
    context = ssl.create_default_context(cafile=cafile)
    if mode in ("prefer", "require"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        context.check_hostname = False
    return context, host if mode == "verify-full" else None
