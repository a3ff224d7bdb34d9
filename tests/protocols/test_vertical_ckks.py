"""The CKKS gradient step of vertical logistic regression: it matches numpy, the
guest sees only uniform values, the host's reply is re-randomised, and malformed
or misbound inputs are refused before use."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sa

from cleanroom.errors import ProtocolError
from protocols.vertical import ckks_gradient as ckks
from protocols.vertical.ckks_gradient import (
    FEATURE_SCALE_BITS,
    PARAMETERS,
    RESIDUAL_SCALE_BITS,
    CkksLayout,
    GuestKeys,
    HostContext,
    HostGradient,
)


@pytest.fixture(scope="module")
def keys() -> GuestKeys:
    return GuestKeys()


@pytest.fixture(scope="module")
def host(keys: GuestKeys) -> HostContext:
    return HostContext(keys.public_context())


def _step(
    keys: GuestKeys, host: HostContext, rows: int, features: int, batch: int = 0
) -> tuple[np.ndarray, np.ndarray, list[int], HostGradient, bytes, bytes]:
    rng = np.random.default_rng(rows + features)
    d, x = rng.uniform(-2, 2, rows), rng.normal(size=(rows, features))
    layout = CkksLayout(batch or rows, features)
    data = keys.encrypt_residuals(layout, d, context=b"r")
    step = HostGradient(host, layout, x)
    masked = step.masked(data, context=b"r", reply=b"g")
    values = keys.decrypt_masked(layout, masked, context=b"g")
    return d, x, values, step, data, masked


@pytest.mark.parametrize(
    ("rows", "features"),
    [(64, 7), (1024, 20), (300, 3), (20_000, 5)],
)
def test_the_gradient_matches_numpy(
    keys: GuestKeys, host: HostContext, rows: int, features: int
) -> None:
    d, x, values, step, _, _ = _step(keys, host, rows, features)
    gradient = step.unmask(values, rows)
    layout = CkksLayout(rows, features)
    flood = 2.0 ** (layout.flood_bits - layout.product_scale_bits) / rows
    # Feature quantisation (2^-13 per product) and the flood, nothing else.
    tolerance = 2.0 ** -(FEATURE_SCALE_BITS + 1) * 2 + flood
    assert np.abs(gradient - x.T @ d / rows).max() < tolerance


def test_more_features_than_one_ciphertext_holds(
    keys: GuestKeys, host: HostContext
) -> None:
    layout = CkksLayout(4096, 9)  # 4 features per ciphertext: 3 groups
    assert layout.groups == 3
    d, x, values, step, _, _ = _step(keys, host, 4096, 9)
    assert np.allclose(step.unmask(values, 4096), x.T @ d / 4096, atol=1e-3)


def test_what_the_guest_decrypts_is_uniform(keys: GuestKeys, host: HostContext) -> None:
    d, x, values, _, _, _ = _step(keys, host, 256, 12)
    q = host.ring.q
    scaled = x.T @ d * 2.0 ** (RESIDUAL_SCALE_BITS + FEATURE_SCALE_BITS)
    # The true values are below 2^105; uniform values mod q (> 2^118) are not,
    # except with probability about 2^-13 each.
    assert all(min(v, q - v) > 2**106 for v in values)
    assert all(abs(s) < 2**105 for s in scaled)


def test_the_hosts_reply_is_rerandomised(keys: GuestKeys, host: HostContext) -> None:
    """Without a fresh Enc(0) the reply's c1 would be c1 * Xt, which the guest (who
    made c1) could divide out to read the host's features."""
    rows, features = 128, 4
    _, x, _, _, data, masked = _step(keys, host, rows, features)
    ring = host.ring
    layout = CkksLayout(rows, features)
    blob = ckks._unpack(data, ckks._tag(b"r", host.digest), 1, "residuals")[0]
    ct = ring.load(blob, RESIDUAL_SCALE_BITS, "residuals")
    poly = np.zeros(layout.degree)
    for k in range(features):
        poly[(k + 1) * rows - rows : (k + 1) * rows] = np.clip(x, -8, 8)[::-1, k]
    product = sa.Ciphertext()
    ring.evaluator.multiply_plain(ct, ring.encode(poly, FEATURE_SCALE_BITS), product)
    reply_blob = ckks._unpack(masked, ckks._tag(b"g", host.digest), 1, "masked")[0]
    reply = ring.load(reply_blob, layout.product_scale_bits, "masked")
    offset = layout.degree * ring.limbs
    same = sum(product[offset + i] == reply[offset + i] for i in range(64))
    assert same == 0


def test_the_flood_covers_the_error_terms_with_40_bits() -> None:
    layout = CkksLayout(1024, 20)
    assert layout.flood_bits == FEATURE_SCALE_BITS + 23 + 5 + 40
    n = PARAMETERS.poly_modulus_degree
    error = 19 * n * (2 ** (FEATURE_SCALE_BITS + 4) + 2) + 19
    assert error < 2 ** (FEATURE_SCALE_BITS + ckks.H_MARGIN_BITS)
    assert layout.features * error / 2 ** (layout.flood_bits + 1) <= 2**-41


def test_the_largest_layout_cannot_wrap_mod_q(host: HostContext) -> None:
    layout = CkksLayout(1 << 16, 1000)
    assert layout.honest_bound < host.ring.q // 2
    assert host.ring.q > 2**118


def test_residuals_under_another_context_are_refused(
    keys: GuestKeys, host: HostContext
) -> None:
    layout = CkksLayout(64, 3)
    data = keys.encrypt_residuals(layout, np.zeros(64), context=b"batch-1")
    step = HostGradient(host, layout, np.zeros((64, 3)))
    with pytest.raises(ProtocolError, match="not bound"):
        step.masked(data, context=b"batch-2", reply=b"g")


def test_a_ciphertext_at_another_scale_is_refused(
    keys: GuestKeys, host: HostContext
) -> None:
    layout = CkksLayout(64, 3)
    data = keys.encrypt_residuals(layout, np.zeros(64), context=b"r")
    masked = HostGradient(host, layout, np.zeros((64, 3))).masked(
        data, context=b"r", reply=b"r"
    )
    # A host reply (scale 2^(A+F)) replayed as residuals (scale 2^A).
    step = HostGradient(host, layout, np.zeros((64, 3)))
    with pytest.raises(ProtocolError, match="wrong parameters"):
        step.masked(masked, context=b"r", reply=b"g")


def test_unmasked_values_out_of_range_are_refused(
    keys: GuestKeys, host: HostContext
) -> None:
    _, _, values, step, _, _ = _step(keys, host, 64, 3)
    forged = [(v + host.ring.q // 3) % host.ring.q for v in values]
    with pytest.raises(ProtocolError, match="out of range"):
        step.unmask(forged, 64)


@pytest.mark.parametrize("extra", ["secret", "galois", "relin"])
def test_a_context_with_more_than_the_public_key_is_refused(extra: str) -> None:
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        PARAMETERS.poly_modulus_degree,
        coeff_mod_bit_sizes=list(PARAMETERS.coeff_mod_bit_sizes),
    )
    if extra == "galois":
        context.generate_galois_keys()
    data = context.serialize(
        save_public_key=True,
        save_secret_key=extra == "secret",
        save_galois_keys=extra == "galois",
        save_relin_keys=extra == "relin",
    )
    with pytest.raises(ProtocolError):
        HostContext(data)


def test_a_context_of_another_parameter_set_is_refused() -> None:
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 60])
    data = context.serialize(save_secret_key=False, save_relin_keys=False)
    with pytest.raises(ProtocolError):
        HostContext(data)


def test_the_guest_floods_every_value_it_returns(
    keys: GuestKeys, host: HostContext
) -> None:
    """Exact decryptions would be linear equations in the guest's secret key for
    the host: two decryptions of one reply differ, by at most the flood."""
    layout = CkksLayout(64, 3)
    data = keys.encrypt_residuals(layout, np.ones(64), context=b"r")
    step = HostGradient(host, layout, np.ones((64, 3)))
    masked = step.masked(data, context=b"r", reply=b"g")
    first = keys.decrypt_masked(layout, masked, context=b"g")
    second = keys.decrypt_masked(layout, masked, context=b"g")
    q = host.ring.q
    gaps = [min((a - b) % q, (b - a) % q) for a, b in zip(first, second, strict=True)]
    assert all(0 < gap <= 2 ** (layout.flood_bits + 1) for gap in gaps)
    assert max(gaps) > 2 ** (layout.flood_bits - 8)
