#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ are installed, running and set up for
# Dabba on this (Debian) machine: the bring-up shared by `make run`,
# `make test` and CI. Idempotent, and quick when all is in place already.
set -euo pipefail

say() { echo "services: $*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  say "installing $*"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL
command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432
fi
# Local development trusts loopback; a fresh Debian install asks for a password.
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
  say "allowing trust auth on loopback for local development"
  hba=$(as_root su postgres -c "psql -Atc 'SHOW hba_file'")
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root su postgres -c "psql -Atc 'SELECT pg_reload_conf()'" >/dev/null
fi
if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'dabba'")" != 1 ]; then
  say "creating database dabba"
  psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE dabba'
fi

# RabbitMQ
command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
rabbit_up() { rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; }
if ! rabbit_up; then
  say "starting RabbitMQ"
  rabbitmqctl -q start_app >/dev/null 2>&1 || as_root rabbitmq-server -detached || true
  for _ in $(seq 90); do rabbit_up && break; sleep 1; done
  rabbit_up || { echo "RabbitMQ did not come up" >&2; exit 1; }
fi
enabled=$(rabbitmq-plugins -q list -e -m 2>/dev/null || true)
for plugin in rabbitmq_management rabbitmq_prometheus; do
  if ! grep -qx "$plugin" <<<"$enabled"; then
    say "enabling $plugin"
    rabbitmq-plugins -q enable "$plugin" >/dev/null
  fi
done
say "PostgreSQL and RabbitMQ are ready"
