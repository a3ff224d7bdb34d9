"""sf-heu peer driver: an encrypted sum with HEU's batch (numpy) API, one value per
ciphertext, driven line by line over stdin/stdout (JSON) so that its repeats can
be interleaved with cleanroom's.

First line: {"schema": "ZPaillier" | "OU", "key_bits": 3072, "parties": P,
"values": d, "seed": s}; the answer gives the version and key generation time.
Then each line "run" does one repeat: encrypt every party's int64 vector
(``Encryptor.encrypt`` on a PlaintextArray), add the P ciphertext arrays, decrypt
the sum and check it against numpy; the answer gives each phase's CPU and wall.
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata

import numpy as np
from heu import numpy as hnp
from heu import phe


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _since(start: tuple[float, float]) -> dict[str, float]:
    cpu, wall = _clock()
    return {"cpu": cpu - start[0], "wall": wall - start[1]}


def main() -> None:
    job = json.loads(sys.stdin.readline())
    schema = getattr(phe.SchemaType, job["schema"])
    parties, length = int(job["parties"]), int(job["values"])
    rng = np.random.default_rng(int(job["seed"]))
    # Values below 2^59 so that a sum of up to 16 parties still fits int64.
    vectors = [rng.integers(-(2**59), 2**59, length) for _ in range(parties)]
    expected = np.sum(vectors, axis=0)

    start = _clock()
    kit = hnp.setup(schema, int(job["key_bits"]))
    keygen = _since(start)
    encryptor, evaluator, decryptor = kit.encryptor(), kit.evaluator(), kit.decryptor()
    encoder = kit.integer_encoder(scale=1)

    _answer({"version": metadata.version("sf-heu"), "keygen": keygen})
    for line in sys.stdin:
        if line.strip() != "run":
            raise SystemExit(f"unknown command {line.strip()!r}")
        start = _clock()
        ciphertexts = [encryptor.encrypt(kit.array(v, encoder)) for v in vectors]
        encrypt = _since(start)
        start = _clock()
        total = ciphertexts[0]
        for other in ciphertexts[1:]:
            total = evaluator.add(total, other)
        add = _since(start)
        start = _clock()
        result = decryptor.decrypt(total).to_numpy(encoder)
        decrypt = _since(start)
        if not np.array_equal(np.asarray(result, dtype=np.int64), expected):
            raise SystemExit("sf-heu decrypted a wrong sum")
        _answer({"encrypt": encrypt, "add": add, "decrypt": decrypt})


def _answer(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
