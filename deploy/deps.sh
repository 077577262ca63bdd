#!/usr/bin/env bash
# deploy/deps.sh: installs what Meridian needs to build, test and run the local
# world on Debian 12, and creates the unprivileged `meridian` user that runs
# PostgreSQL (which refuses to run as root).
#
# It runs at every test run, so the common case (everything present) only asks
# dpkg and returns. As non-root it installs nothing: it says what is missing and
# fails. Installing server packages never leaves their system services running:
# they would grab the default ports and are not what the world or tests use.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libuv1-dev libpq-dev libnats-dev libhiredis-dev libsodium-dev libyajl-dev
  libc-ares-dev libssl-dev node-llhttp libcmocka-dev
  postgresql redis-server nats-server dnsmasq
  prometheus # promtool checks the alert rules and metrics format
  nginx wrk  # benchmarks
  chromium   # a real browser for tests/integration/browser.test.mjs
  procps iproute2
)
# Services that Debian's maintainer scripts start and enable on install.
SERVICES=(postgresql redis-server nats-server dnsmasq prometheus nginx)
SERVICE_USER=meridian

log() { printf 'deps: %s\n' "$*" >&2; }

installed() { # prints nothing, succeeds when package $1 is installed
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
# Node.js may come from elsewhere (nodesource, nvm): only install Debian's when absent.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

need_user=0
getent passwd "$SERVICE_USER" >/dev/null 2>&1 || need_user=1

if [ ${#missing[@]} -eq 0 ] && [ $need_user -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  [ ${#missing[@]} -gt 0 ] && log "missing packages: ${missing[*]}"
  [ $need_user -eq 1 ] && log "missing system user: $SERVICE_USER (runs PostgreSQL)"
  log "run as root: sudo $0"
  exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d exit 101 tells invoke-rc.d/deb-systemd-invoke not to start services.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by meridian deploy/deps.sh during apt-get install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  new_services=()
  for s in "${SERVICES[@]}"; do
    for p in "${missing[@]}"; do [ "$p" = "$s" ] && new_services+=("$s"); done
  done

  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"

  # Belt and braces: stop and disable what we just installed, so that nothing
  # listens on 5432/6379/4222/53/80/9090 now or after a reboot. Services that
  # were installed before are the machine owner's business.
  for s in "${new_services[@]}"; do
    if [ -d /run/systemd/system ]; then
      systemctl disable --now "$s" >/dev/null 2>&1 || true
    else
      service "$s" stop >/dev/null 2>&1 || true
    fi
  done
  if [ $own_policy -eq 1 ]; then
    rm -f "$policy"
    trap - EXIT
  fi
fi

if [ $need_user -eq 1 ]; then
  log "creating system user $SERVICE_USER"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$SERVICE_USER"
fi

still=()
for p in "${PACKAGES[@]}"; do installed "$p" || still+=("$p"); done
command -v node >/dev/null 2>&1 || still+=(node)
command -v npm >/dev/null 2>&1 || still+=(npm)
if [ ${#still[@]} -gt 0 ]; then
  log "still missing after install: ${still[*]}"
  exit 1
fi
log "done"
