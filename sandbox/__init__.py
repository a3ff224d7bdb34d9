"""Run approved analyst code in a locked-down container and vet what it outputs.

Typical use on a node::

    verify_bundle(code_dir, approved_digest)          # review.py
    runner = select_runner(allow_fallback=False)      # fallback.py / executor.py
    report = runner.run(code_dir, data_dir, out_dir, timeout_s=600)
    result = vet_outputs(out_dir, dataset, rules)     # vetting.py
    released = result.release()                       # raises if held
"""

from sandbox.executor import DockerSandbox
from sandbox.fallback import (
    NO_ENGINE,
    UnshareSandbox,
    engine_available,
    select_runner,
    unshare_available,
)
from sandbox.image import build_image, docker_client, ensure_image, image_tag
from sandbox.review import (
    Finding,
    bundle_digest,
    static_findings,
    unpack_bundle,
    verify_bundle,
)
from sandbox.runner import RunReport, SandboxLimits, SandboxRunner
from sandbox.vetting import VettingResult, VettingRules, vet_outputs

__all__ = [
    "NO_ENGINE",
    "DockerSandbox",
    "Finding",
    "RunReport",
    "SandboxLimits",
    "SandboxRunner",
    "UnshareSandbox",
    "VettingResult",
    "VettingRules",
    "build_image",
    "bundle_digest",
    "docker_client",
    "engine_available",
    "ensure_image",
    "image_tag",
    "select_runner",
    "static_findings",
    "unpack_bundle",
    "unshare_available",
    "verify_bundle",
    "vet_outputs",
]
