#!/usr/bin/env bash
# A private PostgreSQL server from Debian's packages, for an MLflow tracking server's
# backend store (README: "A shared tracking server"; tests/test_scaleout.py).
#
#   scripts/start-postgres.sh           start it (installing Debian's postgresql if missing),
#                                       create the role and database, print the URI
#   scripts/start-postgres.sh --stop    stop it
#
# Idempotent: an existing data dir is reused, a running server is left running, the role
# and database are created only when missing. The server listens on 127.0.0.1 only, with
# its Unix socket inside the data dir; as root it runs as the `postgres` user (PostgreSQL
# refuses to run as root). Settings, from the environment:
#   LAB_PG_DATA      data dir                  (default /var/tmp/lab-postgres)
#   LAB_PG_PORT      TCP port on 127.0.0.1     (default 5433; Debian's own cluster has 5432)
#   LAB_PG_USER      role the URI logs in as   (default lab)
#   LAB_PG_PASSWORD  its password              (default lab)
#   LAB_PG_DB        database, owned by it     (default lab)
# The only line on stdout is the URI, e.g. postgresql://lab:lab@127.0.0.1:5433/lab
set -euo pipefail

DATA="${LAB_PG_DATA:-/var/tmp/lab-postgres}"
PORT="${LAB_PG_PORT:-5433}"
ROLE="${LAB_PG_USER:-lab}"
PASSWORD="${LAB_PG_PASSWORD:-lab}"
DB="${LAB_PG_DB:-lab}"

die() {
    echo "start-postgres.sh: $*" >&2
    exit 1
}

[[ "$ROLE" =~ ^[a-z_][a-z0-9_]*$ && "$DB" =~ ^[a-z_][a-z0-9_]*$ ]] || die "LAB_PG_USER and LAB_PG_DB must be lower-case identifiers"
[[ "$PASSWORD" =~ ^[A-Za-z0-9_.~-]+$ ]] || die "LAB_PG_PASSWORD may hold only letters, digits and _.~- (it goes into a URI unescaped)"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "LAB_PG_PORT must be a number"
[[ "$DATA" = /* && "$DATA" != *[[:space:]\'\"]* ]] || die "LAB_PG_DATA must be an absolute path without spaces or quotes"

pg_bin() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]] && echo "$dir"
}

RUN=()          # runs a command as the server's owner
if [[ "$(id -u)" -eq 0 ]]; then
    RUN=(runuser -u postgres --)
fi

BIN="$(pg_bin || true)"

if [[ "${1:-}" == "--stop" ]]; then
    [[ -n "$BIN" ]] || die "PostgreSQL is not installed"
    if [[ -f "$DATA/postmaster.pid" ]] && "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
    else
        echo "start-postgres.sh: no server running in $DATA" >&2
    fi
    exit 0
fi
[[ $# -eq 0 ]] || die "usage: $0 [--stop]"

if [[ -z "$BIN" ]]; then
    echo "start-postgres.sh: installing Debian's postgresql" >&2
    SUDO=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null || die "PostgreSQL is missing: run as root (or install Debian's postgresql package)"
        SUDO=(sudo)
    fi
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
    BIN="$(pg_bin)" || die "postgresql installed, but no initdb under /usr/lib/postgresql/*/bin"
fi

# The data dir, owned by whoever runs the server.
if [[ "$(id -u)" -eq 0 ]]; then
    install -d -m 700 -o postgres -g postgres "$DATA"
else
    install -d -m 700 "$DATA"
fi
"${RUN[@]}" test -w "$DATA" || die "$DATA is not writable by the server's user (its parent dirs must be searchable)"

if [[ ! -f "$DATA/PG_VERSION" ]]; then
    # Superuser `postgres`, trusted only on the Unix socket (in the 0700 data dir);
    # TCP logins need a password.
    "${RUN[@]}" "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 >"$DATA.initdb.log" 2>&1 \
        || { cat "$DATA.initdb.log" >&2; die "initdb failed"; }
    rm -f "$DATA.initdb.log"
fi

if "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    PORT="$(sed -n 4p "$DATA/postmaster.pid")"   # already running: keep its port
    echo "start-postgres.sh: already running in $DATA on 127.0.0.1:$PORT" >&2
else
    "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA" start >&2 \
        || { tail -n 20 "$DATA/server.log" >&2; die "the server did not start (port $PORT taken? see $DATA/server.log)"; }
fi

psql_admin() {
    "${RUN[@]}" "$BIN/psql" -X -q -h "$DATA" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tA "$@"
}
if [[ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" ]]; then
    psql_admin -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'"
else
    psql_admin -c "ALTER ROLE $ROLE LOGIN PASSWORD '$PASSWORD'"
fi
if [[ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]]; then
    psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
fi

echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
