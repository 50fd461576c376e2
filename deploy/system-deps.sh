#!/usr/bin/env bash
# System packages the demo, the tests and the benchmarks need: the PostgreSQL server binaries
# (a throwaway cluster is started from them; no running server is assumed), the psql client,
# Node.js with npm (the OpenID Provider the identity tests log in against), OpenSSH's sshd and
# clients (a throwaway sshd is the target of the SSH tests) and PgBouncer (the benchmark's
# pooling baseline; it is started from its binary, never as a service) and shellcheck (the
# agent installer's lint), systemd-analyze and kubectl (the deploy/ checks), setpriv and ip
# (the run_as sandbox and the network-namespace tests), strace (a wrapper the stdin-program
# tests run a shell behind, and the count of the audit writer's syncs) and HAProxy (the load
# balancer in front of the replicas in the replica tests and the soak; started from its
# binary, never as a service), nginx (the HTTP tests' target, in front of httpbin; started from
# its binary with its access log in the test's folder, never as a service), wrk (the HTTP
# benchmark's load) and MariaDB's server and clients (a throwaway mariadbd is the target of the
# MySQL tests, started from its binary; the mariadb CLI and mysqlslap drive it).
set -euo pipefail

have_pg() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
    || { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; }
}

missing=()
have_pg || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 || missing+=(openssh-client)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)  # checks deploy/install-agent.sh
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)  # checks deploy/systemd/
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)  # kustomizes deploy/kubernetes/
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)  # the run_as capability sandbox
command -v ip >/dev/null 2>&1 || missing+=(iproute2)  # network namespaces of test_network.py
command -v strace >/dev/null 2>&1 || missing+=(strace)  # test_ssh_stdin.py's wrapper; counts fdatasyncs
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)  # the balancer of test_replicas_network.py
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)  # test_http.py's target
command -v wrk >/dev/null 2>&1 || missing+=(wrk)  # the HTTP benchmark's load generator
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v mysqlslap >/dev/null 2>&1 && command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
# A Big5 locale (test_ssh.py: a client's multibyte locale must not change how the target's
# shell reads a command), compiled from the sources of Debian's `locales`.
[ -e /usr/share/i18n/charmaps/BIG5.gz ] && [ -e /usr/share/i18n/locales/zh_TW ] \
  || missing+=(locales)

big5_locale() {
  locale -a 2>/dev/null | grep -qi '^zh_TW\.big5$' && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing the zh_TW.BIG5 locale; make it with: sudo localedef -i zh_TW -f BIG5 zh_TW.BIG5" >&2
    return 1
  fi
  localedef -i zh_TW -f BIG5 zh_TW.BIG5
}

if [ ${#missing[@]} -eq 0 ]; then
  big5_locale
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}; install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} …" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
big5_locale
