"""Namespace jail for the unshare fallback: runs as PID 1 inside fresh namespaces.

``fallback.py`` starts this file's source with ``python3 -I -c`` under
``unshare --user --net --pid --fork --mount``; when the host runs as root it
maps the namespace's root to ``nobody`` instead of to itself. The jail builds a
new root on a tmpfs (read-only binds of /usr and the interpreter, /code and
/data read-only, tmpfs /tmp and a size-capped tmpfs /output), pivots into it,
drops every capability, sets no_new_privs, and runs the job as its child. When
the job ends it kills everything left, then writes one JSON line (exit status,
CPU seconds, peak memory, /output usage) and a tar of /output to the result fd.
It uses only the standard library, because it runs before any venv is mounted.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import tarfile
import time
from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
# statvfs reports these flags with the same bit values as mount(2) except relatime.
_LOCKABLE = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME
_ST_RELATIME = 4096
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 38, 47
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41}
SYS_CAPSET = {"x86_64": 126, "aarch64": 91, "arm64": 91}
# Any existing directory will do to hang the jail's root tmpfs on (ours alone).
_ROOT_CANDIDATES = ("/mnt", "/media", "/srv", "/opt", "/tmp")  # noqa: S108

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode(),
            flags,
            data.encode() or None,
        ),
        f"mount {source} on {target}",
    )


def _bind(source: str, target: str, *, writable: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, "", MS_BIND | MS_REC)
    # Flags the parent namespace set are locked in ours: keep them when remounting.
    st = os.statvfs(target).f_flag
    flags = (st & _LOCKABLE) | (MS_RELATIME if st & _ST_RELATIME else 0)
    flags |= MS_NOSUID | MS_NODEV | (0 if writable else MS_RDONLY)
    _mount("", target, "", MS_BIND | MS_REMOUNT | flags)


def _tmpfs(target: str, size: int, mode: str, *, exec_ok: bool = False) -> None:
    os.makedirs(target, exist_ok=True)
    flags = MS_NOSUID | MS_NODEV | (0 if exec_ok else MS_NOEXEC)
    _mount("tmpfs", target, "tmpfs", flags, f"size={size},mode={mode}")


def _build_root(config: dict[str, Any], binds: list[tuple[int, str]]) -> str:
    root = next(p for p in _ROOT_CANDIDATES if os.path.isdir(p))
    _tmpfs(root, 8 * 1024 * 1024, "0755", exec_ok=True)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            os.symlink(os.readlink(host), f"{root}{host}")
        elif os.path.isdir(host):
            _bind(host, f"{root}{host}", writable=False)
    for path in ("/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(path):
            _bind(os.path.realpath(path), f"{root}{path}", writable=False)
    # Scratch space first: binds below /tmp (an interpreter in a venv there) must land
    # on top of the jail's own tmpfs, not be hidden under it.
    for scratch in ("/dev/shm", "/tmp"):  # noqa: S108 - the jail's own tmpfs mounts
        _tmpfs(f"{root}{scratch}", config["tmp_bytes"], "1777")
    for fd, target in binds:
        _bind(f"/proc/self/fd/{fd}", f"{root}{target}", writable=False)
        os.close(fd)
    os.makedirs(f"{root}/dev", exist_ok=True)
    for device in ("null", "zero", "random", "urandom"):
        _bind(f"/dev/{device}", f"{root}/dev/{device}", writable=True)
    for link, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{root}/dev/{link}")
    _tmpfs(f"{root}/output", config["output_bytes"], "0700")
    os.makedirs(f"{root}/proc", exist_ok=True)
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    return root


def _pivot(root: str) -> None:
    machine = os.uname().machine
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT[machine], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach old root")
    os.chdir("/")
    _mount("", "/", "", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_privileges() -> None:
    last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last_cap + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop bounding cap")
    _libc.prctl(
        PR_CAP_AMBIENT, 4, 0, 0, 0
    )  # PR_CAP_AMBIENT_CLEAR_ALL; old kernels lack it
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.syscall(SYS_CAPSET[os.uname().machine], header, data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _reap_all() -> None:
    for _ in range(1000):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _report(result_fd: int, status: int, wall: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    st = os.statvfs("/output")
    header = {
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "memory_peak": usage.ru_maxrss * 1024,
        "output_used": (st.f_blocks - st.f_bfree) * st.f_frsize,
    }
    with os.fdopen(result_fd, "wb") as sink:
        sink.write(json.dumps(header).encode() + b"\n")
        with tarfile.open(fileobj=sink, mode="w|") as tar:
            tar.add("/output", arcname=".", recursive=True)


def main() -> None:
    config = json.loads(sys.argv[1])
    result_fd = int(config["result_fd"])
    handshake = config["handshake"]
    if handshake:  # the host maps our uid 0 to nobody, then says go
        ready, go = handshake
        os.write(ready, b"r")
        if os.read(go, 1) != b"g":
            raise RuntimeError("the host did not map the namespace's users")
    # Opened while still the host user, so paths only it can walk (a venv
    # below /root) can be bound; binding from these fds needs no path walk.
    binds = []
    for path, target in config["binds"]:
        flags = os.O_PATH | (os.O_DIRECTORY if os.path.isdir(path) else 0)
        binds.append((os.open(path, flags), target))
    if handshake:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    _pivot(_build_root(config, binds))
    child = os.fork()
    if child == 0:
        try:
            os.close(result_fd)
            # Set here, not on the host: RLIMIT_NPROC then counts this user
            # namespace's processes only (Linux >= 5.14), and the jail's own
            # tar of /output is not bound by the job's RLIMIT_FSIZE.
            for name, value in config["rlimits"].items():
                limit = getattr(resource, f"RLIMIT_{name}")
                resource.setrlimit(limit, (value, value))
            _drop_privileges()
            os.chdir("/code")
            # No shell: argv is the interpreter and the approved entrypoint.
            os.execve(config["argv"][0], config["argv"], config["env"])  # noqa: S606
        except BaseException as exc:
            print(f"cleanroom-jail: cannot start the job: {exc}", file=sys.stderr)
        os._exit(127)
    started = time.monotonic()
    deadline = started + float(config["timeout_s"])
    status = None
    while status is None:
        pid, raw = os.waitpid(child, os.WNOHANG)
        if pid:
            status = raw
        elif time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            status = os.waitpid(child, 0)[1]
        else:
            time.sleep(0.02)
    wall = time.monotonic() - started
    _reap_all()
    _report(result_fd, status, wall)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:
        print(f"cleanroom-jail: {exc}", file=sys.stderr)
        sys.exit(125)
