"""What a sealed release opened to, in a form anyone can re-check.

A job with an analyst party releases a document the nodes signed but the
coordinator could not read (commitments, a sealed sum); the analyst's party
turns it into the reading. ``OpenedResult`` keeps, beside that reading, what
the party was given: the spec, the messages it received (opened from their
envelopes) and the release's attachments. ``reread`` builds the job type's
analyst party afresh, replays those messages, finalizes the signed document and
requires the very same reading; the party's own checks (node signatures on
reports, commitments, sum checksums) then run for the verifier as they ran for
the analyst. A reading that does not follow from the signed release fails.

Job types whose analyst party needs the analyst's secret (e.g. an HE secret key)
set ``JobType.rereadable = False``; their readings cannot be re-checked by
anyone else and ``reread`` says so.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom import jobtypes
from cleanroom.errors import CryptoError, InvalidSignature, ProtocolError, SpecError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.base import AnalystContext
from cleanroom.keys import canonical_json
from cleanroom.provenance import check_attachments, signing_keys_of
from protocols.party import Inbound

FORMAT: Final = "cleanroom-opened-result"
VERSION: Final = 1


@dataclass(frozen=True)
class OpenedResult:
    """The analyst's reading of a release, with what it was read from."""

    reading: Mapping[str, Any]
    spec_yaml: str
    transcript: Sequence[Inbound] = ()
    attachments: Mapping[str, bytes] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "reading": dict(self.reading),
            "spec": self.spec_yaml,
            "transcript": [
                {
                    "sender": m.sender,
                    "stage": m.stage,
                    "payload": base64.b64encode(m.payload).decode(),
                }
                for m in self.transcript
            ],
            "attachments": {
                name: base64.b64encode(data).decode()
                for name, data in sorted(self.attachments.items())
            },
        }

    @classmethod
    def from_json(cls, obj: Any) -> OpenedResult:
        """Parse ``to_json`` output; CryptoError on anything malformed."""
        try:
            if obj["format"] != FORMAT or obj["version"] != VERSION:
                raise ValueError(f"not a {FORMAT} v{VERSION} file")
            transcript = [
                Inbound(
                    str(m["sender"]),
                    str(m["stage"]),
                    base64.b64decode(m["payload"], validate=True),
                )
                for m in obj["transcript"]
            ]
            attachments = {
                str(n): base64.b64decode(d, validate=True)
                for n, d in obj["attachments"].items()
            }
            reading, spec = obj["reading"], obj["spec"]
            if not isinstance(reading, dict) or not isinstance(spec, str):
                raise ValueError("reading or spec malformed")
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise CryptoError(f"malformed opened result: {exc}") from None
        return cls(reading, spec, transcript, attachments)


def reread(
    document: Mapping[str, Any],
    opened: OpenedResult,
    signing_keys: Mapping[str, bytes],
) -> Mapping[str, Any]:
    """Re-derive the reading from a verified release ``document`` and return it;
    InvalidSignature unless it is exactly ``opened.reading``.

    ``signing_keys``: the nodes' identity keys, from the release's CA-checked
    bundles."""
    try:
        spec = parse_spec(opened.spec_yaml)
    except SpecError as exc:
        raise InvalidSignature(
            f"the opened result's spec does not parse: {exc}"
        ) from None
    if spec.spec_hash != document.get("spec_hash"):
        raise InvalidSignature("the opened result is for another spec")
    job_type = jobtypes.get(spec.type)
    if not job_type.rereadable:
        raise InvalidSignature(
            f"a '{spec.type}' reading needs the analyst's secret to re-check"
        )
    check_attachments(document, opened.attachments)
    party = job_type.analyst_party(
        AnalystContext(
            job_id=str(document["job_id"]),
            spec=spec,
            analyst="verifier",
            parties=spec.nodes,
            signing_key=Ed25519PrivateKey.generate(),  # the replay sends nothing
            peer_signing_keys=dict(signing_keys),
        )
    )
    try:
        party.start()
        for message in opened.transcript:
            party.receive(message)
        party.attach(opened.attachments)
        reading = party.finalize(document["result"])
    except ProtocolError as exc:
        raise InvalidSignature(f"the opened result does not replay: {exc}") from None
    if canonical_json(dict(reading)) != canonical_json(dict(opened.reading)):
        raise InvalidSignature("the reading is not what the release opens to")
    return reading


def verify_opened_file(result: bytes, opened: bytes) -> Mapping[str, Any]:
    """Check an opened result saved beside a release file (itself verified with
    ``provenance.verify_result_bytes``); the reading it re-derives."""
    document = json.loads(result)
    try:
        parsed = OpenedResult.from_json(json.loads(opened))
    except ValueError as exc:
        raise CryptoError(f"the opened result is not JSON: {exc}") from None
    return reread(document, parsed, signing_keys_of(document))
