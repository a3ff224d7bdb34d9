"""Build the sandbox's Docker image from Debian packages, without any image registry."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cleanroom.errors import SandboxError

SANDBOX_UID = 10001
IMAGE_REPOSITORY = "cleanroom-sandbox"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Bump when the build steps change in a way the recipe below does not capture.
_RECIPE_VERSION = 1
_SUITE = "bookworm"
_INCLUDE = ("python3", "python3-numpy", "python3-pandas", "python3-sklearn")
# bookworm's python3-scipy depends on pythran, which drags in a whole C/C++
# toolchain and boost headers. None of it is needed at run time; purging it
# halves the image and leaves no compiler inside the sandbox.
_BUILD_ONLY_PACKAGES = (
    "python3-pythran", "python3-beniget", "python3-gast", "python3-ply",
    "g++", "g++-12", "gcc", "gcc-12", "cpp", "cpp-12",
    "binutils", "binutils-common", "binutils-x86-64-linux-gnu", "libbinutils",
    "libctf0", "libctf-nobfd0", "libgprofng0", "libjansson4",
    "libboost-dev", "libboost1.74-dev", "libxsimd-dev",
    "libopenblas-dev", "libopenblas-pthread-dev",
    "libstdc++-12-dev", "libgcc-12-dev", "libc6-dev", "libc-dev-bin",
    "libcrypt-dev", "libnsl-dev", "libtirpc-dev", "linux-libc-dev", "rpcsvc-proto",
    "libpython3-all-dev", "libpython3-dev", "libpython3.11-dev",
    "python3-all-dev", "python3-dev", "python3.11-dev",
    "libexpat1-dev", "zlib1g-dev",
    "libasan8", "libtsan2", "liblsan0", "libubsan1", "libitm1", "libcc1-0",
    "libisl23", "libmpc3", "libmpfr6",
)  # fmt: skip
_SETUP_SCRIPT = f"""set -eu
dpkg --purge --force-depends $(dpkg-query -W -f '${{Package}}\\n' \
  {" ".join(_BUILD_ONLY_PACKAGES)} 2>/dev/null || true)
groupadd --gid {SANDBOX_UID} sandbox
useradd --uid {SANDBOX_UID} --gid {SANDBOX_UID} --no-create-home \
  --home-dir /nonexistent --shell /usr/sbin/nologin sandbox
find / -xdev -type f -perm /6000 -exec chmod a-s {{}} +
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old \
  /var/log/* /usr/share/doc/* /usr/share/man/* /usr/share/info/* \
  /usr/share/locale/* /tmp/* /var/tmp/*
mkdir -p /code /data /output
chown {SANDBOX_UID}:{SANDBOX_UID} /output
python3 -B -c 'import numpy, pandas, sklearn.linear_model'
"""
_IMAGE_CHANGES = (
    f"USER {SANDBOX_UID}:{SANDBOX_UID}",
    "WORKDIR /code",
    "ENV LANG=C.UTF-8 HOME=/tmp PYTHONDONTWRITEBYTECODE=1",
    'CMD ["python3"]',
)


def recipe() -> dict[str, Any]:
    """Everything that determines the image's content; its hash is the image tag."""
    return {
        "version": _RECIPE_VERSION,
        "suite": _SUITE,
        "variant": "minbase",
        "arch": platform.machine(),
        "include": list(_INCLUDE),
        "setup": _SETUP_SCRIPT,
        "changes": list(_IMAGE_CHANGES),
    }


def recipe_digest() -> str:
    """SHA-256 over the canonical JSON of :func:`recipe`."""
    canonical = json.dumps(recipe(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def image_tag() -> str:
    """The image this build recipe produces, e.g. ``cleanroom-sandbox:1a2b…``."""
    return f"{IMAGE_REPOSITORY}:{recipe_digest()[:16]}"


def cache_dir() -> Path:
    """Where rootfs tarballs are kept between builds."""
    if explicit := os.environ.get("CLEANROOM_CACHE_DIR"):
        return Path(explicit) / "sandbox"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cleanroom" / "sandbox"


def docker_client() -> Any:
    """A connected Docker client; raises SandboxError when no engine answers."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise SandboxError(f"no Docker engine is reachable: {exc}") from exc
    return client


def debian_mirror(sources: Iterable[Path] | None = None) -> str:
    """The Debian mirror apt on this machine is configured with for the suite."""
    if explicit := os.environ.get("CLEANROOM_DEBIAN_MIRROR"):
        return explicit
    if sources is None:
        etc = Path("/etc/apt")
        sources = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        found = _mirror_in(text, deb822=path.suffix == ".sources")
        if found:
            return found
    return DEFAULT_MIRROR


def _mirror_in(text: str, *, deb822: bool) -> str | None:
    if deb822:
        for block in text.split("\n\n"):
            fields: dict[str, str] = {}
            for line in block.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith((" ", "#")):
                    fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and _SUITE in fields.get("suites", "").split()
                and fields.get("enabled", "yes").lower() != "no"
                and fields.get("uris")
            ):
                return fields["uris"].split()[0]
        return None
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == _SUITE:
            return words[1]
    return None


def ensure_image(
    *,
    client: Any = None,
    build_if_missing: bool = True,
    progress: Callable[[str], None] | None = None,
) -> str:
    """The sandbox image tag, building it first if it is missing and allowed to."""
    client = client or docker_client()
    tag = image_tag()
    if _image_exists(client, tag):
        return tag
    if not build_if_missing:
        raise SandboxError(
            f"sandbox image {tag} is missing; run `cleanroom sandbox build-image`"
        )
    return build_image(client=client, progress=progress)


def build_image(
    *,
    client: Any = None,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> str:
    """Build (or reuse) the sandbox image and return its tag.

    Debian bookworm is debootstrapped from the configured apt mirror, build-only
    packages are purged, a non-root user (uid 10001) is added, and the root
    filesystem is ``docker import``-ed. The tarball is cached by recipe digest,
    so a rebuild after ``docker rmi`` takes seconds. ``force`` rebuilds both.
    """
    say = progress or (lambda _msg: None)
    client = client or docker_client()
    tag = image_tag()
    if not force and _image_exists(client, tag):
        say(f"sandbox image {tag} already exists")
        return tag
    started = time.monotonic()
    tarball = cache_dir() / f"rootfs-{recipe_digest()[:16]}.tar"
    if force or not tarball.exists():
        _build_rootfs_tarball(tarball, say)
    else:
        say(f"reusing cached root filesystem {tarball}")
    say(f"importing {tarball.name} into Docker as {tag}")
    repository, _, version = tag.partition(":")
    try:
        client.api.import_image(
            src=str(tarball),
            repository=repository,
            tag=version,
            changes=list(_IMAGE_CHANGES),
        )
    except Exception as exc:
        raise SandboxError(f"docker import of {tarball} failed: {exc}") from exc
    if not _image_exists(client, tag):
        raise SandboxError(f"docker import finished but {tag} is not present")
    say(f"built {tag} in {time.monotonic() - started:.0f}s")
    return tag


def _image_exists(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    except Exception as exc:
        raise SandboxError(f"cannot query the Docker engine: {exc}") from exc
    return True


def _build_rootfs_tarball(tarball: Path, say: Callable[[str], None]) -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "building the sandbox image runs debootstrap and needs root; "
            "run `sudo cleanroom sandbox build-image`"
        )
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed (apt-get install debootstrap)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=tarball.parent))
    rootfs = work / "rootfs"
    log = tarball.parent / "build.log"
    try:
        mirror = debian_mirror()
        say(f"debootstrap {_SUITE} from {mirror} (a few minutes; log: {log})")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(_INCLUDE)}",
                _SUITE,
                str(rootfs),
                mirror,
            ],
            log,
        )
        say("purging build-only packages, adding uid 10001, cleaning caches")
        _run(["chroot", str(rootfs), "/bin/sh", "-c", _SETUP_SCRIPT], log)
        say(f"writing {tarball}")
        partial = work / "rootfs.tar"
        _run(
            [
                "tar",
                "--numeric-owner",
                "-C",
                str(rootfs),
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "--exclude=./dev/*",
                "-cf",
                str(partial),
                ".",
            ],
            log,
        )
        partial.replace(tarball)
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def _run(argv: list[str], log: Path) -> None:
    with log.open("ab") as sink:
        sink.write(f"$ {' '.join(argv)}\n".encode())
        sink.flush()
        result = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log.read_bytes()[-2000:].decode(errors="replace")
        raise SandboxError(
            f"{argv[0]} failed with exit code {result.returncode}:\n{tail}"
        )


def _unmount_below(root: Path) -> None:
    """Undo mounts a failed debootstrap left behind, so cleanup cannot reach /proc."""
    prefix = str(root.resolve()) + "/"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    targets = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for target in sorted((t for t in targets if t.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", target], check=False)
