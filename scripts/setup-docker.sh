#!/usr/bin/env bash
# Make a Docker engine available for the sandbox tests (CI, Debian, as root).
# Idempotent: installs docker.io and debootstrap only if missing, starts dockerd
# only if nothing answers on the socket. Never fails the job: if dockerd cannot
# run here it says so loudly and exits 0, and the docker-marked tests skip.
set -u

SOCKET=/var/run/docker.sock
LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
WAIT_S=${DOCKERD_WAIT_S:-60}

loud() {
    echo "################################################################" >&2
    echo "## setup-docker: $*" >&2
    echo "## Sandbox tests marked 'docker' will be SKIPPED." >&2
    echo "################################################################" >&2
}

if [ "$(id -u)" != 0 ]; then
    loud "not running as root; cannot install or start dockerd"
    exit 0
fi

missing=""
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    echo "setup-docker: installing$missing"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends $missing; }; then
        loud "apt-get install$missing failed"
        exit 0
    fi
fi

if docker info >/dev/null 2>&1; then
    echo "setup-docker: dockerd already running"
    exit 0
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    echo "setup-docker: starting dockerd (log: $LOG)"
    nohup dockerd >"$LOG" 2>&1 &
fi

for _ in $(seq 1 "$WAIT_S"); do
    if [ -S "$SOCKET" ] && docker info >/dev/null 2>&1; then
        echo "setup-docker: dockerd is up"
        exit 0
    fi
    sleep 1
done

loud "dockerd did not answer within ${WAIT_S}s; last log lines:"
tail -n 20 "$LOG" >&2 2>/dev/null || true
exit 0
