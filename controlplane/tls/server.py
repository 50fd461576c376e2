"""The listeners' server certificate: the operator's files, re-read when they change, or one the
control plane's own CA issues itself and renews before it expires.

Every new connection asks `context()`; it re-checks the source at most once per `CHECK_EVERY`
and swaps in a new SSLContext when the certificate changed, so a renewed file is served without
a restart. A file that does not load (half-written, key and certificate out of step) keeps the
previous certificate in service and is logged, never a crash.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from controlplane.errors import InvalidArgument
from controlplane.tls.ca import CertificateAuthority
from wire.atomicfile import write_atomic
from wire.frames import ALPN as LEG_ALPN

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between looks at the certificate files
SELF_ISSUED_DAYS = 90
RENEW_WHEN_LEFT = datetime.timedelta(days=30)  # a self-issued certificate is renewed this early
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
# The gRPC port also takes the agents' session legs, told apart by ALPN (decision 0035).
ALPN_GRPC = ("h2", LEG_ALPN)
ALPN_HTTP = ("http/1.1",)


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[int, int, int, int]  # (mtime_ns, size) of the certificate and the key file
    not_after: datetime.datetime
    contexts: dict[tuple[str, ...], ssl.SSLContext]


class ServerTls:
    """One certificate source for both listeners (each has its own ALPN)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        cert_file: Path,
        key_file: Path,
        *,
        issue_for: tuple[list[str], list[str]] | None = None,
    ) -> None:
        self.ca = ca
        self.cert_file = cert_file
        self.key_file = key_file
        self._issue_for = issue_for  # (DNS names, IPs) when the control plane issues its own
        self._loaded: _Loaded | None = None
        self._checked = 0.0
        self.reloads = 0

    @classmethod
    def configure(
        cls,
        data_dir: Path,
        cert_file: Path | None,
        key_file: Path | None,
        names: list[str],
    ) -> ServerTls:
        """The operator's certificate, or one issued by the CA in `data_dir` for `names`."""
        ca = CertificateAuthority.load_or_create(data_dir)
        if (cert_file is None) != (key_file is None):
            raise InvalidArgument("--tls-cert and --tls-key go together: give both or neither")
        if cert_file is not None and key_file is not None:
            tls = cls(ca, cert_file, key_file)
        else:
            dns, ips = split_names(names)
            tls = cls(
                ca, data_dir / SERVER_CERT_FILE, data_dir / SERVER_KEY_FILE, issue_for=(dns, ips)
            )
        tls.load()
        return tls

    @property
    def self_issued(self) -> bool:
        return self._issue_for is not None

    def load(self) -> None:
        """First load: a certificate that does not load stops the start with a clear error."""
        if self._issue_for is not None and self._needs_issue():
            self._issue()
        try:
            self._loaded = self._read()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise InvalidArgument(
                f"cannot use the TLS certificate {self.cert_file} with key {self.key_file}: {exc}"
            ) from None
        self._checked = time.monotonic()

    def context(self, alpn: tuple[str, ...]) -> ssl.SSLContext:
        """The context for a new connection, after a cheap look whether the source changed."""
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY:
            self._checked = now
            self._refresh()
        assert self._loaded is not None, "load() first"
        contexts = self._loaded.contexts
        if alpn not in contexts:
            contexts[alpn] = self._context(alpn)
        return contexts[alpn]

    def _refresh(self) -> None:
        assert self._loaded is not None
        if self._issue_for is not None and self._needs_issue():
            try:
                self._issue()
            except OSError as exc:
                log.error("cannot renew the server certificate in %s: %s", self.cert_file, exc)
        try:
            if _stamp(self.cert_file, self.key_file) == self._loaded.stamp:
                return
            self._loaded = self._read()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning(
                "the TLS certificate %s changed but does not load (%s); "
                "still serving the previous one",
                self.cert_file,
                exc,
            )
            return
        self.reloads += 1
        log.info(
            "serving the renewed TLS certificate %s (valid until %s)",
            self.cert_file,
            self._loaded.not_after.isoformat(),
        )

    def _read(self) -> _Loaded:
        stamp = _stamp(self.cert_file, self.key_file)
        pem = self.cert_file.read_bytes()
        leaf = x509.load_pem_x509_certificate(pem)
        loaded = _Loaded(stamp, leaf.not_valid_after_utc, {})
        # Build one context now: a key that does not match its certificate fails here.
        loaded.contexts[ALPN_GRPC] = self._context(ALPN_GRPC)
        return loaded

    def _context(self, alpn: tuple[str, ...]) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        # Request a client certificate, require none: agents present theirs (issued by this
        # control plane's CA), people's CLIs present none and authenticate by token.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=self.ca.cert_pem.decode())
        context.set_alpn_protocols(list(alpn))
        return context

    def _needs_issue(self) -> bool:
        assert self._issue_for is not None
        try:
            leaf = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
            if not self.key_file.exists():
                return True
        except (OSError, ValueError):
            return True
        left = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        if left < RENEW_WHEN_LEFT:
            return True
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return True
        dns, ips = self._issue_for
        have_dns = set(san.get_values_for_type(x509.DNSName))
        have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        return not (set(dns) <= have_dns and set(ips) <= have_ips)

    def _issue(self) -> None:
        assert self._issue_for is not None
        dns, ips = self._issue_for
        chain, key = self.ca.issue_server(dns, ips, days=SELF_ISSUED_DAYS)
        # Key first, then certificate, each replaced atomically: a reader sees old or new.
        write_atomic(self.key_file, key, 0o600)
        write_atomic(self.cert_file, chain, 0o644)
        log.info("issued a server certificate for %s", ", ".join(dns + ips))


def split_names(names: list[str]) -> tuple[list[str], list[str]]:
    """Hosts to put in the certificate → (DNS names, IPs), loopback names always included."""
    import ipaddress

    dns: list[str] = []
    ips: list[str] = []
    for given in [*names, "localhost", "127.0.0.1", "::1"]:
        name = _without_port(given.strip())
        if not name:
            continue
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            dns.append(name.lower())
            continue
        if not ip.is_unspecified:  # 0.0.0.0 / :: are not an address anyone dials
            ips.append(str(ip))
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def _without_port(name: str) -> str:
    """`gw.example.com:8443` → `gw.example.com`, `[::1]:8443` → `::1`; a bare IPv6 stays."""
    if name.startswith("["):
        return name[1:].partition("]")[0]
    host, sep, port = name.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return name


def _stamp(cert: Path, key: Path) -> tuple[int, int, int, int]:
    c, k = cert.stat(), key.stat()
    return (c.st_mtime_ns, c.st_size, k.st_mtime_ns, k.st_size)
