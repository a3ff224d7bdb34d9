"""Code-bundle review aids: a digest that pins the approved code, and static findings.

The digest is binding: a node runs a bundle only if its digest equals the one
the reviewer approved. The static findings are *aids for the human reviewer*
and not a security boundary — Python is too dynamic for an AST scan to prove
anything (``getattr``, ``importlib``, encoded strings…). What actually confines
the code is the sandbox: no network, read-only mounts, no capabilities,
resource limits, and output vetting before anything leaves.
"""

from __future__ import annotations

import ast
import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cleanroom.errors import SandboxError

MAX_BUNDLE_FILES = 1000
MAX_BUNDLE_BYTES = 10 * 1024 * 1024
_DIGEST_DOMAIN = b"cleanroom-code-bundle-v1\n"
ALLOWED_PATH_ROOTS = ("/data", "/code", "/output", "/tmp")  # noqa: S108 - in-sandbox

_NETWORK_MODULES = frozenset(
    {
        "socket", "ssl", "socketserver", "urllib", "urllib3", "requests", "http",
        "httpx", "aiohttp", "ftplib", "smtplib", "poplib", "imaplib", "telnetlib",
        "xmlrpc", "websocket", "websockets", "paramiko", "grpc", "dns",
    }
)  # fmt: skip
_PROCESS_MODULES = frozenset({"subprocess", "pty", "multiprocessing", "signal"})
_NATIVE_MODULES = frozenset({"ctypes", "cffi", "_ctypes", "mmap"})
_DYNAMIC_MODULES = frozenset({"importlib", "marshal", "pickle", "shelve", "runpy"})
_DYNAMIC_CALLS = frozenset({"eval", "exec", "compile", "__import__", "breakpoint"})
_OS_PROCESS_PREFIXES = (
    "os.system", "os.popen", "os.exec", "os.spawn", "os.fork",
    "os.posix_spawn", "os.kill", "os.killpg", "os.setuid",
)  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One thing a reviewer should look at, with where it is."""

    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.detail}"


def read_bundle(path: Path) -> dict[str, bytes]:
    """The bundle's files by relative POSIX path: a directory or a tar archive.

    Only regular files are accepted; links, devices and names that climb out
    of the bundle are refused, as are bundles over the size limits.
    """
    files = _read_tar(path) if path.is_file() else _read_dir(path)
    if len(files) > MAX_BUNDLE_FILES:
        raise SandboxError(f"code bundle has more than {MAX_BUNDLE_FILES} files")
    if sum(len(data) for data in files.values()) > MAX_BUNDLE_BYTES:
        raise SandboxError(f"code bundle exceeds {MAX_BUNDLE_BYTES} bytes")
    return files


def bundle_digest(path: Path) -> str:
    """SHA-256 over sorted relative paths and contents; any changed byte changes it."""
    return files_digest(read_bundle(path))


def files_digest(files: dict[str, bytes]) -> str:
    """``bundle_digest`` of files already read."""
    hasher = hashlib.sha256(_DIGEST_DOMAIN)
    for name, data in sorted(files.items()):
        encoded = name.encode()
        hasher.update(len(encoded).to_bytes(8, "big") + encoded)
        hasher.update(len(data).to_bytes(8, "big") + data)
    return hasher.hexdigest()


def verify_bundle(path: Path, approved_digest: str) -> None:
    """Raise unless the bundle is byte-for-byte the one that was approved."""
    actual = bundle_digest(path)
    if actual != approved_digest:
        raise SandboxError(
            f"code bundle changed since approval (digest {actual[:16]}… is not "
            f"the approved {approved_digest[:16]}…); refusing to run it"
        )


def unpack_bundle(path: Path, dest: Path) -> None:
    """Write the bundle's files under the empty directory ``dest`` (e.g. from a tar)."""
    if any(dest.iterdir()):
        raise SandboxError(f"{dest} must be empty to unpack a bundle into it")
    for name, data in read_bundle(path).items():
        target = dest.joinpath(*PurePosixPath(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o644)


def static_findings(path: Path) -> list[Finding]:
    """Imports and calls a reviewer should look at: network, processes, native code,
    dynamic code, and absolute paths outside /data, /code, /output and /tmp."""
    findings: list[Finding] = []
    for name, data in sorted(read_bundle(path).items()):
        if not name.endswith(".py"):
            findings.append(Finding(name, 0, "non-python", "file is not Python source"))
            continue
        try:
            tree = ast.parse(data, filename=name)
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", 0) or 0
            findings.append(Finding(name, line, "syntax", f"does not parse: {exc}"))
            continue
        findings.extend(_Scanner(name).scan(tree))
    return findings


class _Scanner(ast.NodeVisitor):
    def __init__(self, name: str) -> None:
        self._name = name
        self._aliases: dict[str, str] = {}
        self._found: list[Finding] = []

    def scan(self, tree: ast.AST) -> list[Finding]:
        # Aliases first, so a call before its (function-local) import resolves.
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    self._aliases[alias.asname or alias.name] = full
        self.visit(tree)
        return self._found

    def _add(self, node: ast.AST, rule: str, detail: str) -> None:
        line = getattr(node, "lineno", 0)
        self._found.append(Finding(self._name, line, rule, detail))

    def _check_module(self, node: ast.AST, module: str) -> None:
        top = module.split(".")[0]
        for rule, modules in (
            ("network", _NETWORK_MODULES),
            ("process", _PROCESS_MODULES),
            ("native-code", _NATIVE_MODULES),
            ("dynamic-code", _DYNAMIC_MODULES),
        ):
            if top in modules:
                self._add(node, rule, f"imports {module}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module:
            self._check_module(node, node.module)
            if node.module == "os":
                for alias in node.names:
                    self._check_call_name(node, f"os.{alias.name}")

    def visit_Call(self, node: ast.Call) -> None:
        name = self._qualified(node.func)
        if name:
            self._check_call_name(node, name)
        for arg in [*node.args, *(kw.value for kw in node.keywords)]:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                self._check_path(arg, arg.value)
        self.generic_visit(node)

    def _check_call_name(self, node: ast.AST, name: str) -> None:
        if name in _DYNAMIC_CALLS or name == "importlib.import_module":
            self._add(node, "dynamic-code", f"calls {name}()")
        elif name.startswith(_OS_PROCESS_PREFIXES):
            self._add(node, "process", f"uses {name}")

    def _check_path(self, node: ast.AST, value: str) -> None:
        if not value.startswith("/") or "\n" in value or len(value) > 4096:
            return
        path = PurePosixPath(value)
        if ".." in path.parts or not any(
            path == PurePosixPath(root) or path.is_relative_to(root)
            for root in ALLOWED_PATH_ROOTS
        ):
            self._add(
                node,
                "host-path",
                f"uses path {value!r} outside /data, /code, /output, /tmp",
            )

    def _qualified(self, func: ast.expr) -> str | None:
        parts: list[str] = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return None
        base = self._aliases.get(func.id, func.id)
        return ".".join([base, *reversed(parts)])


def _read_dir(root: Path) -> dict[str, bytes]:
    if not root.is_dir():
        raise SandboxError(f"code bundle {root} is neither a directory nor a tar file")
    files: dict[str, bytes] = {}
    for entry in sorted(root.rglob("*")):
        rel = entry.relative_to(root).as_posix()
        if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
            raise SandboxError(f"code bundle entry {rel} is not a plain file")
        if entry.is_file() and "__pycache__" not in entry.parts:
            files[rel] = entry.read_bytes()
    return files


def _read_tar(archive: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = [p for p in PurePosixPath(member.name).parts if p != "."]
                if member.name.startswith("/") or ".." in parts:
                    raise SandboxError(
                        f"bundle entry {member.name!r} escapes the bundle"
                    )
                if member.isdir() or not parts:
                    continue
                if not member.isreg():
                    raise SandboxError(
                        f"bundle entry {member.name!r} is not a plain file"
                    )
                if member.size > MAX_BUNDLE_BYTES:
                    raise SandboxError(f"code bundle exceeds {MAX_BUNDLE_BYTES} bytes")
                source = tar.extractfile(member)
                name = "/".join(parts)
                if source is None or name in files:
                    raise SandboxError(
                        f"bundle entry {name!r} is unreadable or repeated"
                    )
                files[name] = source.read()
    except tarfile.TarError as exc:
        raise SandboxError(
            f"code bundle {archive} is not a readable tar: {exc}"
        ) from exc
    return files
