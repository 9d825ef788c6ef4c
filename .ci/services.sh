#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ are installed, running and set up for
# Dabba on this (Debian) machine: the bring-up shared by `make run`,
# `make test` (both through `make deps`) and CI. Idempotent, and quick (a
# second or two) when all is in place already.
#
# Extra Debian packages to install alongside, if absent, can be named in
# EXTRA_PACKAGES as command:package pairs (CI adds chromium and
# docker-compose), so a fresh machine needs one apt-get update.
set -euo pipefail

# Plugins: the UI and its API (the e2e suite reads queue depths from it),
# per-key ordering for the location feed, and metrics.
RABBITMQ_PLUGINS=(rabbitmq_management rabbitmq_consistent_hash_exchange rabbitmq_prometheus)
PLUGINS_FILE=${RABBITMQ_ENABLED_PLUGINS_FILE:-/etc/rabbitmq/enabled_plugins}
PG_WAIT=600    # seconds for PostgreSQL to accept connections (crash recovery replays up to max_wal_size)
RABBIT_WAIT=120 # seconds for RabbitMQ to boot (a first boot is slow)

say() { echo "services: $*"; }
die() { echo "services: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
have() { command -v "$1" >/dev/null 2>&1; }
# systemd runs the daemons where it is PID 1; containers and CI images
# without it get them started directly.
with_systemd() { [ -d /run/systemd/system ]; }

# wait_for SECONDS WHAT CMD...: polls CMD once a second, for a bounded time.
wait_for() {
  local secs=$1 what=$2
  shift 2
  for ((i = 0; i < secs; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "$what not up after ${secs}s"
}

# --- packages -------------------------------------------------------------
missing=()
have pg_ctlcluster || missing+=(postgresql)
have rabbitmq-server || missing+=(rabbitmq-server)
for pair in ${EXTRA_PACKAGES:-}; do
  have "${pair%%:*}" || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  have apt-get || die "please install ${missing[*]} (this script knows only Debian's apt)"
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  # No recommends: docker-compose would bring a Docker engine, chromium a
  # desktop's worth of fonts and helpers.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- PostgreSQL -----------------------------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ! pg_up; then
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
  [ -n "$version" ] || die "no PostgreSQL cluster in /etc/postgresql"
  # A machine that has just booted may have the server starting already
  # (it refuses connections until its recovery is over): then only wait.
  if as_root pg_ctlcluster "$version" main status >/dev/null 2>&1; then
    say "waiting for PostgreSQL $version to accept connections"
  else
    say "starting PostgreSQL $version"
    if with_systemd; then
      as_root systemctl start "postgresql@$version-main"
    else
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
  fi
  wait_for "$PG_WAIT" PostgreSQL pg_up
fi
# Local development trusts loopback, as the default DATABASE_URL (no
# password) expects; a fresh Debian install asks for one.
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
  say "allowing trust auth on loopback for local development"
  hba=$(as_root su postgres -c "psql -Atc 'SHOW hba_file'")
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root su postgres -c "psql -Atc 'SELECT pg_reload_conf()'" >/dev/null
  psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null
fi
# Autovacuum keeps the outbox (each row is updated when claimed and when
# sent) and the inbox from bloating; a machine set up with it off gets it
# back (a reload suffices).
if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SHOW autovacuum')" != on ]; then
  say "turning PostgreSQL's autovacuum on"
  psql -h 127.0.0.1 -U postgres -d postgres -qc 'ALTER SYSTEM SET autovacuum = on' -c 'SELECT pg_reload_conf()' >/dev/null
fi
# Memory and checkpoints for a write-heavy workload, instead of Debian's
# defaults (128 MB of buffers, a checkpoint forced by every GB of WAL): the
# stack's tables (orders, outbox, inbox, idempotency records) outgrow 128 MB
# within minutes under load, and every page evicted dirty is written by the
# backend that needed the buffer. A quarter of the memory, at most 1 GB, for
# buffers; checkpoints every 15 minutes or 4 GB of WAL, so fewer pages are
# written whole into the WAL after each. shared_buffers takes a restart: done
# once, the first time.
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
buffers_mb=$((mem_mb / 4 > 1024 ? 1024 : mem_mb / 4))
buffers_mb=$((buffers_mb < 128 ? 128 : buffers_mb))
buffers="${buffers_mb}MB"
[ $((buffers_mb % 1024)) = 0 ] && buffers="$((buffers_mb / 1024))GB"
# pg_set NAME VALUE: sets it if it differs, and prints NAME if so. VALUE is
# written the way SHOW writes it (1GB, not 1024MB).
pg_set() {
  if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SHOW $1")" != "$2" ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "ALTER SYSTEM SET $1 = '$2'" && echo "$1"
  fi
}
changed=$(pg_set max_wal_size 4GB; pg_set checkpoint_timeout 15min)
restart=$(pg_set shared_buffers "$buffers")
if [ -n "$restart" ]; then
  say "restarting PostgreSQL for shared_buffers = $buffers"
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
  if with_systemd; then
    as_root systemctl restart "postgresql@$version-main"
  else
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  fi
  wait_for "$PG_WAIT" PostgreSQL pg_up
elif [ -n "$changed" ]; then
  say "PostgreSQL settings: $(echo $changed)"
  psql -h 127.0.0.1 -U postgres -d postgres -qAtc 'SELECT pg_reload_conf()' >/dev/null
fi
if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'dabba'")" != 1 ]; then
  say "creating database dabba"
  psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE dabba'
fi

# --- RabbitMQ -------------------------------------------------------------
# The CLI tools need the node's Erlang cookie, which only root and the
# rabbitmq user can read.
rabbit_up() { as_root rabbitmq-diagnostics -q check_port_connectivity; }
# missing_plugins reads the enabled-plugins file rather than asking the
# node: rabbitmq-plugins takes seconds, the file a moment.
missing_plugins() {
  local p
  for p in "${RABBITMQ_PLUGINS[@]}"; do
    grep -qw "$p" "$PLUGINS_FILE" 2>/dev/null || echo "$p"
  done
}
mapfile -t plugins < <(missing_plugins)
if ! rabbit_up >/dev/null 2>&1; then
  if pgrep -u rabbitmq -f 'beam.*rabbit' >/dev/null && ! as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    # A node that is booting (a machine that has just started): only wait.
    say "waiting for RabbitMQ to boot"
  elif as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    # The node runs but its app was stopped (rabbitmqctl stop_app, as the
    # fault tests do): start the app only.
    say "starting the RabbitMQ app"
    as_root rabbitmqctl -q start_app
  else
    if [ ${#plugins[@]} -gt 0 ]; then
      say "enabling ${plugins[*]} (offline)"
      as_root rabbitmq-plugins -q enable --offline "${plugins[@]}" >/dev/null
      plugins=()
    fi
    say "starting RabbitMQ"
    if with_systemd; then
      as_root systemctl start rabbitmq-server
    else
      as_root rabbitmq-server -detached
    fi
  fi
  wait_for "$RABBIT_WAIT" RabbitMQ rabbit_up
fi
if [ ${#plugins[@]} -gt 0 ]; then
  say "enabling ${plugins[*]}"
  as_root rabbitmq-plugins -q enable "${plugins[@]}" >/dev/null
fi
say "PostgreSQL and RabbitMQ are ready"
