#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./dev.sh demo   set up, then run `cleanroom demo` (a local federation on sample data)
#   ./dev.sh test   set up (incl. PostgreSQL and Docker where the machine allows), run the tests
#   ./dev.sh bench  set up, then run the quick benchmark preset
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv
LOG=${CLEANROOM_SETUP_LOG:-.setup.log}
: > "$LOG"

quietly() {
  # Run a setup step with its output in $LOG; on failure show the log's tail.
  local what=$1; shift
  printf '%s ... ' "$what"
  if "$@" >> "$LOG" 2>&1; then
    echo ok
  else
    local rc=$?
    echo "FAILED (see $LOG)"
    tail -n 20 "$LOG" >&2
    return "$rc"
  fi
}

setup_system() {
  # PSI/OPRF bind the system libsodium (>= 1.0.18) for ristretto255.
  if ! ldconfig -p | grep -q 'libsodium\.so'; then
    (apt-get update -qq && apt-get install -y -qq libsodium23) \
      || echo "!! libsodium23 could not be installed; PSI/OPRF tests will fail"
  fi
  # The separate-hosts tests (root only) build namespaces, bridges and firewalls.
  if [ "$(id -u)" = 0 ]; then
    for tool in ip bridge iptables ss; do
      if ! command -v "$tool" > /dev/null; then
        (apt-get update -qq && apt-get install -y -qq iproute2 iptables) \
          || echo "!! iproute2/iptables could not be installed; netns tests will skip"
        break
      fi
    done
  fi
}

install_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
}

setup_python() {
  quietly "system libraries" setup_system
  quietly "python environment ($VENV)" install_python
}

setup_services() {
  # PostgreSQL for the store contract tests and Docker for the sandbox tests. Both
  # scripts are idempotent and only print a loud note where the machine cannot run them.
  quietly "PostgreSQL" bash scripts/setup-postgres.sh \
    || echo "!! PostgreSQL setup failed; its tests will skip loudly"
  quietly "Docker" bash scripts/setup-docker.sh \
    || echo "!! Docker setup failed; sandbox tests will skip loudly"
}

cpu_cores() {
  # The cores this process may use: nproc, lowered to a cgroup CPU quota if one is
  # set (a container can see more cores than it is allowed to run on).
  local cores quota period
  cores=$(nproc 2> /dev/null || echo 1)
  if [ -r /sys/fs/cgroup/cpu.max ]; then
    read -r quota period < /sys/fs/cgroup/cpu.max
  elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
    period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us 2> /dev/null || echo 100000)
  fi
  if [[ "${quota:-max}" =~ ^[0-9]+$ ]] && [[ "${period:-0}" =~ ^[0-9]+$ ]] \
      && [ "$period" -gt 0 ]; then
    local allowed=$(( (quota + period - 1) / period ))
    [ "$allowed" -lt "$cores" ] && cores=$allowed
  fi
  [ "$cores" -lt 1 ] && cores=1
  echo "$cores"
}

case "${1:-}" in
  demo)
    setup_python
    # Docker lets the demo show the data sandbox; without it that step is skipped.
    quietly "Docker" bash scripts/setup-docker.sh \
      || echo "!! Docker unavailable; the sandbox step will be skipped"
    exec "$VENV/bin/cleanroom" demo
    ;;
  test)
    setup_python
    setup_services
    # One worker per core, at most 4; a file's tests stay on one worker so its
    # module-scoped federations are started once. CLEANROOM_TEST_WORKERS=1 runs
    # everything in this process.
    workers=${CLEANROOM_TEST_WORKERS:-$(cpu_cores)}
    if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
      echo "CLEANROOM_TEST_WORKERS must be a positive integer, not '$workers'" >&2
      exit 2
    fi
    [ "$workers" -gt 4 ] && workers=4
    parallel=()
    [ "$workers" -gt 1 ] && parallel=(-n "$workers" --dist loadfile)
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${parallel[@]}" "${@:2}"
    ;;
  bench)
    setup_python
    exec "$VENV/bin/cleanroom" bench --preset quick "${@:2}"
    ;;
  *)
    echo "usage: ./dev.sh demo | test [pytest args] | bench" >&2
    exit 2
    ;;
esac
