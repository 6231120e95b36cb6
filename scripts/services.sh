#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis that the tests use are up.
# Starts them when they are installed but stopped; fails with a clear message when missing.
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

if ! command -v pg_isready >/dev/null 2>&1; then
  echo "error: PostgreSQL client tools (pg_isready) are not installed." >&2
  echo "       Install PostgreSQL (Debian: apt-get install postgresql) and run make test again." >&2
  exit 1
fi
if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "PostgreSQL is stopped; starting cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  if ! pg_up; then
    echo "error: PostgreSQL is not running on $PG_HOST:$PG_PORT and could not be started." >&2
    echo "       The tests need PostgreSQL with trust auth and a database named 'test'." >&2
    exit 1
  fi
fi
if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d test -qtAc 'select 1' >/dev/null 2>&1; then
  psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc 'CREATE DATABASE test' >/dev/null 2>&1 || true
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d test -qtAc 'select 1' >/dev/null 2>&1; then
    echo "error: cannot connect to PostgreSQL database 'test' as user postgres on $PG_HOST:$PG_PORT." >&2
    exit 1
  fi
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "error: Redis is not installed (redis-server not found)." >&2
  echo "       Install it (Debian: apt-get install redis-server) and run make test again." >&2
  exit 1
fi
if ! redis_up; then
  echo "Redis is stopped; starting it on 127.0.0.1:$REDIS_PORT"
  mkdir -p /tmp/bpm-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /tmp/bpm-redis --logfile /tmp/bpm-redis/redis.log
  for _ in $(seq 1 30); do redis_up && break; sleep 0.2; done
  if ! redis_up; then
    echo "error: Redis is not running on 127.0.0.1:$REDIS_PORT and could not be started." >&2
    exit 1
  fi
fi
echo "services: PostgreSQL $PG_HOST:$PG_PORT and Redis 127.0.0.1:$REDIS_PORT are up"
