"""Throwaway HTTP targets nobody here wrote: httpbin (PyPI) under waitress, behind nginx (Debian),
and a WebSocket echo on aiohttp's server.

nginx serves `/static/` from ``base/www``, answers `/switch-protocols` with a bare 101 (no
WebSocket behind it: it goes on reading HTTP) and passes everything else to httpbin; it listens
in plain HTTP and, with a certificate from a CA of its own, in TLS. Its access log
(``base/access.log``) says what reached the target: one line per request, as
``METHOD URI STATUS AUTHORIZATION X-API-KEY`` (tab-separated), so that tests can check what
the gateway forwarded (and what it never did), and that the credential arrived. It closes a
kept-alive connection after 2 s idle, as servers do, so that clients meet that too. Nothing of
the machine's own nginx is used: everything lives under ``base``. ``deploy/system-deps.sh``
installs nginx.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from devenv.certs import ServerCert, make_server_cert
from devenv.processes import Service, free_port, stop_process, wait_ready

__all__ = ["HttpTargets", "HttpdStartError", "LogLine", "start_http_targets"]

HOST = "127.0.0.1"
_INSTALL_HINT = "install nginx with `apt-get install nginx-light` (deploy/system-deps.sh)"


class HttpdStartError(RuntimeError):
    """nginx or httpbin could not be started; the message says why."""


@dataclass(frozen=True, slots=True)
class LogLine:
    method: str
    uri: str
    status: int
    authorization: str
    api_key: str


@dataclass
class HttpTargets(Service):
    base: Path
    port: int  # nginx, plain HTTP
    tls_port: int  # nginx, TLS with `cert`
    httpbin_port: int
    cert: ServerCert
    ws_port: int  # a WebSocket echo server (devenv/wsecho.py, on aiohttp) at /echo
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    @property
    def access_log(self) -> Path:
        return self.base / "access.log"

    @property
    def www(self) -> Path:
        return self.base / "www"

    def log_lines(self) -> list[LogLine]:
        """What nginx logged so far (it writes each line when the request ends)."""
        try:
            text = self.access_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        lines = []
        for row in text.splitlines():
            method, uri, status, authorization, api_key = (row.split("\t") + [""] * 5)[:5]
            lines.append(LogLine(method, uri, int(status or 0), authorization, api_key))
        return lines

    def stop(self) -> None:
        for process in reversed(self._processes):
            stop_process(process, "http target", [(signal.SIGTERM, 5), (signal.SIGKILL, 5)])
        self._processes.clear()
        self._untrack()


def _nginx_conf(targets: HttpTargets) -> str:
    base = targets.base
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {kind}_temp_path {base}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  log_format gate '$request_method\\t$request_uri\\t$status\\t'
                  '$http_authorization\\t$http_x_api_key';
  access_log {base}/access.log gate;
{temp}
  client_max_body_size 0;
  keepalive_requests 100000;
  keepalive_timeout 2s;  # short, so that a client's idle connection is closed under it
  upstream httpbin {{ server {HOST}:{targets.httpbin_port}; keepalive 16; }}
  server {{
    listen {HOST}:{targets.port};
    listen {HOST}:{targets.tls_port} ssl;
    ssl_certificate {targets.cert.cert};
    ssl_certificate_key {targets.cert.key};
    location /static/ {{ root {base}/www; }}
    # A 101 that switches nothing, as an application may answer: nginx goes on reading HTTP.
    location = /switch-protocols {{ return 101; }}
    location / {{
      proxy_pass http://httpbin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_request_buffering off;
    }}
  }}
}}
"""


def _probe(port: int) -> str | None:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return None
    except OSError as exc:
        return str(exc)


def _start(
    targets: HttpTargets, name: str, args: list[str], ports: list[int], timeout: float
) -> None:
    """Start one server (its output in ``base/NAME.log``) and wait until it listens."""
    log_file = targets.base / f"{name}.log"
    with log_file.open("ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    targets._processes.append(process)
    wait_ready(
        process,
        lambda: next((why for port in ports if (why := _probe(port)) is not None), None),
        name=name,
        log_file=log_file,
        offset=0,
        timeout=timeout,
        port_taken="in use",
        error=HttpdStartError,
    )


def start_http_targets(base: Path, timeout: float = 20) -> HttpTargets:
    """httpbin under waitress, nginx in front of it; stop() (or `with`) ends both."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise HttpdStartError(f"nginx is not installed; {_INSTALL_HINT}")
    base.mkdir(parents=True, exist_ok=True)
    for sub in ("tmp", "www/static"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    cert = make_server_cert(base / "tls", [HOST, "api.internal"])
    targets = HttpTargets(base, free_port(), free_port(), free_port(), cert, free_port())
    targets._track()
    python = sys.executable
    try:
        waitress = [python, "-m", "waitress", f"--listen={HOST}:{targets.httpbin_port}"]
        _start(
            targets,
            "httpbin",
            [*waitress, "--threads=16", "httpbin:app"],
            [targets.httpbin_port],
            timeout,
        )
        _start(
            targets,
            "wsecho",
            [python, "-m", "devenv.wsecho", str(targets.ws_port)],
            [targets.ws_port],
            timeout,
        )
        (base / "nginx.conf").write_text(_nginx_conf(targets))
        nginx_args = [nginx, "-p", str(base), "-c", str(base / "nginx.conf"), "-g", "daemon off;"]
        _start(targets, "nginx", nginx_args, [targets.port, targets.tls_port], timeout)
    except BaseException:
        targets.stop()
        raise
    return targets
