#!/usr/bin/env bash
# Make sure the services the tests need are reachable, starting them when they are installed but
# stopped. Redis always; PostgreSQL only when DATABASE_URL points at it. Fails with what to install.
set -euo pipefail

redis_url=${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}
hostport=${redis_url#redis://}
hostport=${hostport%%/*}
hostport=${hostport##*@}
redis_host=${hostport%%:*}
redis_port=${hostport##*:}
[ "$redis_port" = "$hostport" ] && redis_port=6379

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

if ! tcp_open "$redis_host" "$redis_port"; then
  case "$redis_host" in
    127.0.0.1|localhost) ;;
    *) echo "Redis at $redis_host:$redis_port is not reachable (TEST_REDIS_URL)." >&2; exit 1 ;;
  esac
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "Redis is not running on $redis_host:$redis_port and redis-server is not installed." >&2
    echo "Install it (Debian/Ubuntu: apt-get install redis-server) or set TEST_REDIS_URL." >&2
    exit 1
  fi
  echo "Starting redis-server on $redis_host:$redis_port"
  mkdir -p /tmp/asyncgate-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" \
    --appendonly no --dir /tmp/asyncgate-redis --logfile /tmp/asyncgate-redis/redis.log
  for _ in $(seq 50); do tcp_open "$redis_host" "$redis_port" && break; sleep 0.1; done
  tcp_open "$redis_host" "$redis_port" || { echo "redis-server did not start" >&2; exit 1; }
fi

case "${DATABASE_URL:-}" in
  postgres://*|postgresql://*|pgsql://*)
    rest=${DATABASE_URL#*://}
    rest=${rest##*@}
    pg_hostport=${rest%%/*}
    pg_host=${pg_hostport%%:*}
    pg_port=${pg_hostport##*:}
    [ "$pg_port" = "$pg_hostport" ] && pg_port=5432
    if ! tcp_open "$pg_host" "$pg_port"; then
      if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        echo "Starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
        for _ in $(seq 100); do tcp_open "$pg_host" "$pg_port" && break; sleep 0.1; done
      fi
      tcp_open "$pg_host" "$pg_port" || {
        echo "PostgreSQL is not reachable on $pg_host:$pg_port (DATABASE_URL)." >&2
        echo "Install and start it (Debian/Ubuntu: apt-get install postgresql)." >&2
        exit 1
      }
    fi
    ;;
esac
