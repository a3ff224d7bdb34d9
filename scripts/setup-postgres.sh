#!/usr/bin/env bash
# Make PostgreSQL's server binaries available for the postgres store tests (CI, Debian, root).
# Idempotent: installs nothing when initdb is already present. The tests start their
# own throwaway cluster (tests/conftest.py), so no server is configured or started here.
set -euo pipefail

find_initdb() {
    local candidate
    for candidate in /usr/lib/postgresql/*/bin/initdb; do
        if [[ -x "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    command -v initdb || return 1
}

if initdb_path="$(find_initdb)"; then
    echo "setup-postgres: initdb already present at $initdb_path; nothing installed"
else
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "setup-postgres: initdb not found and not root; run as root to install" >&2
        exit 1
    fi
    echo "setup-postgres: initdb not found; installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql
    initdb_path="$(find_initdb)" || {
        echo "setup-postgres: postgresql installed but initdb still not found" >&2
        exit 1
    }
    echo "setup-postgres: installed; initdb at $initdb_path"
fi

# Running as root, the tests run initdb/postgres as this user (they refuse root).
if [[ "$(id -u)" -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    echo "setup-postgres: created system user 'postgres'"
elif id postgres >/dev/null 2>&1; then
    echo "setup-postgres: system user 'postgres' exists"
fi
echo "setup-postgres: $("$initdb_path" --version)"
