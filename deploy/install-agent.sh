#!/usr/bin/env bash
# Install a Gatehouse agent on this host as a systemd service.
#
#   sudo deploy/install-agent.sh --controlplane gw.example.com:8443 --name vpc-1 \
#       --token-file ./join.token [--ca-file ca.pem] [--run-as] [--http-listen 127.0.0.1:9100]
#
# Makes a virtualenv in /opt/gatehouse with the agent's part of the package (no control-plane
# dependencies), writes /etc/gatehouse/agent.env (settings, no secret) and
# /etc/gatehouse/agent.token (root, 0600), installs deploy/systemd/gatehouse-agent.service and
# enables it. Run it again to change settings; --no-venv keeps the installed package.
# --root DIR writes every file under DIR and touches no service (for packaging and tests).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix=/opt/gatehouse
package=gatehouse
root=""
controlplane=""
name=""
token_file=""
ca_file=""
http_listen=""
run_as=no
make_venv=yes
start=yes

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "install-agent: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --controlplane) controlplane="${2:?}"; shift 2 ;;
    --name) name="${2:?}"; shift 2 ;;
    --token-file) token_file="${2:?}"; shift 2 ;;
    --ca-file) ca_file="${2:?}"; shift 2 ;;
    --http-listen) http_listen="${2:?}"; shift 2 ;;
    --package) package="${2:?}"; shift 2 ;;
    --prefix) prefix="${2:?}"; shift 2 ;;
    --root) root="${2:?}"; shift 2 ;;
    --run-as) run_as=yes; shift ;;
    --no-venv) make_venv=no; shift ;;
    --no-start) start=no; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install-agent: unknown option $1" >&2; usage 2 ;;
  esac
done

[ -n "$controlplane" ] || die "--controlplane HOST:PORT is required"
[ -n "$name" ] || die "--name is required: the name given to 'gatehouse admin agents create'"
[ -n "$token_file" ] || die "--token-file is required: a file holding the join token"
[ -r "$token_file" ] || die "cannot read the token file $token_file"
case "$name" in
  *[!A-Za-z0-9._-]* | "") die "--name may hold letters, digits, '.', '_' and '-' only" ;;
esac
case "$controlplane" in
  *[!A-Za-z0-9.:_\[\]-]* | "") die "--controlplane must be HOST:PORT" ;;
esac
[ -n "$(tr -d '\r\n' <"$token_file")" ] || die "the token file $token_file is empty"
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (it writes /etc/gatehouse and a systemd unit), or give --root DIR"
fi

etc="$root/etc/gatehouse"
units="$root/etc/systemd/system"
umask 022

if [ "$make_venv" = yes ]; then
  command -v python3 >/dev/null || die "python3 (3.11 or newer) is required"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "python3 is older than 3.11"
  python3 -m venv "$root$prefix"
  "$root$prefix/bin/pip" install --quiet --upgrade pip
  "$root$prefix/bin/pip" install --quiet "$package"
fi

install -d -m 0755 "$etc" "$units"
# The token: readable by root alone; systemd hands it to the service (LoadCredential=).
install -m 0600 /dev/null "$etc/agent.token"
tr -d '\r\n' <"$token_file" >"$etc/agent.token"

if [ -n "$ca_file" ]; then
  install -m 0644 "$ca_file" "$etc/ca.pem"
fi

{
  echo "# Written by install-agent.sh; GATEHOUSE_* settings of 'gatehouse agent run'."
  echo "GATEHOUSE_CONTROLPLANE=$controlplane"
  echo "GATEHOUSE_AGENT_NAME=$name"
  if [ -n "$ca_file" ]; then echo "GATEHOUSE_CA_FILE=/etc/gatehouse/ca.pem"; fi
  if [ -n "$http_listen" ]; then echo "GATEHOUSE_AGENT_HTTP_LISTEN=$http_listen"; fi
} >"$etc/agent.env.new"
chmod 0644 "$etc/agent.env.new"
mv "$etc/agent.env.new" "$etc/agent.env"

sed "s#/opt/gatehouse/bin/gatehouse#$prefix/bin/gatehouse#" \
  "$here/systemd/gatehouse-agent.service" >"$units/gatehouse-agent.service"
chmod 0644 "$units/gatehouse-agent.service"
if [ "$run_as" = yes ]; then
  install -d -m 0755 "$units/gatehouse-agent.service.d"
  install -m 0644 "$here/systemd/gatehouse-agent.service.d/run-as.conf" \
    "$units/gatehouse-agent.service.d/run-as.conf"
else
  rm -f "$units/gatehouse-agent.service.d/run-as.conf"
fi

if [ -z "$root" ] && [ "$start" = yes ]; then
  systemctl daemon-reload
  systemctl enable gatehouse-agent.service
  systemctl restart gatehouse-agent.service
  echo "gatehouse-agent is running; follow it with: journalctl -u gatehouse-agent -f"
else
  echo "installed under ${root:-/}; start with: systemctl enable --now gatehouse-agent"
fi
