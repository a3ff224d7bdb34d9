"""Owner-side scoring of one slot block: exact circuits, then re-randomise and flood.

Layout: ciphertext ``j`` of block ``b`` holds feature ``j`` of rows
``b * slots .. (b + 1) * slots - 1``, so a linear layer is a weighted sum of whole
ciphertexts and needs no rotation (and no Galois keys). For a logistic model the
owner returns the encrypted logit and the buyer applies the sigmoid after
decrypting: the sigmoid is a public bijection, so the logit tells the buyer exactly
what the probability does, while evaluating it homomorphically would need a
polynomial approximation (more depth, less accuracy) for no privacy gain.

A two-layer MLP ``y = sum_k V_k act(z_k) + c`` with ``z_k = sum_j W_kj x_j + b_k``
and ``act(z) = a0 + a1 z + a2 z^2`` is evaluated in the folded form
``y = sum_k (V_k a2) z_k^2 + sum_k (V_k a1) z_k + (c + a0 sum_k V_k)``: all terms
land at one scale, ``2**(2s + 3w)``, without any rescale, so the whole circuit up
to the single relinearisation is exact (see :mod:`protocols.ckks.flooding`). An MLP
whose activation has no square term is folded into a linear model.
"""

from __future__ import annotations

import math

import numpy as np

from cleanroom.errors import ConfigError
from protocols.ckks.backend import Handle, OwnerContext, Values
from protocols.ckks.flooding import FloodPlan
from protocols.ckks.params import ParameterSet
from protocols.models.asset import LinearParameters, ModelAsset, PolyMLPParameters
from protocols.party import RandomSource


def linear_form(model: ModelAsset) -> tuple[Values, float] | None:
    """(coef, intercept) of a model that is linear in its standardised inputs."""
    p = model.parameters
    if isinstance(p, LinearParameters):
        return p.coef, p.intercept
    if p.coefficient(2) != 0.0:
        return None
    a0, a1 = p.coefficient(0), p.coefficient(1)
    coef = a1 * (p.output_weights @ p.hidden_weights)
    intercept = float(p.output_weights @ (a0 + a1 * p.hidden_bias)) + p.output_bias
    return np.asarray(coef, dtype=np.float64), intercept


def output_bound(model: ModelAsset, input_bound: float) -> float:
    """The largest |raw output| for standardised inputs within +-``input_bound``."""
    form = linear_form(model)
    if form is not None:
        coef, intercept = form
        return float(np.abs(coef).sum() * input_bound + abs(intercept))
    p = model.parameters
    assert isinstance(p, PolyMLPParameters)
    a0, a1, a2 = (p.coefficient(d) for d in range(3))
    z = np.abs(p.hidden_weights).sum(axis=1) * input_bound + np.abs(p.hidden_bias)
    v = np.abs(p.output_weights)
    constant = abs(p.output_bias + a0 * float(p.output_weights.sum()))
    return float((v * (abs(a2) * z * z + abs(a1) * z)).sum() + constant)


def value_bits_needed(model: ModelAsset, input_bound: float) -> int:
    """Bits a parameter set must hold for every output of ``model``."""
    return max(
        1, math.ceil(math.log2(max(output_bound(model, input_bound), 1.0) * 1.01))
    )


def check_model_fits(
    model: ModelAsset, params: ParameterSet, input_bound: float
) -> None:
    """Refuse a set whose depth or value range does not fit ``model``."""
    if model.depth != params.depth:
        raise ConfigError(
            f"{params.name} evaluates depth {params.depth}; the model has depth "
            f"{model.depth}"
        )
    needed = value_bits_needed(model, input_bound)
    if needed > params.value_bits:
        raise ConfigError(
            f"the model's outputs need {needed} bits at input bound {input_bound}; "
            f"{params.name} holds {params.value_bits}"
        )


def evaluate_block(
    context: OwnerContext,
    model: ModelAsset,
    params: ParameterSet,
    plan: FloodPlan,
    features: list[Handle],
    count: int,
    random: RandomSource,
) -> bytes:
    """The serialised, re-randomised, flooded and rescaled result of one block."""
    form = linear_form(model)
    if form is not None:
        result = context.dot(features, form[0], form[1])
    else:
        result = _quadratic(context, model, params, features)
    result = context.rerandomize(result)
    for layer in plan.draw(random, params.slots):
        result = context.add_slots(result, layer)
    # Rescaling only now: a public function of the flooded ciphertext.
    for _ in range(params.output_rescales):
        result = context.rescale(result)
    return context.serialize(result, count)


def _quadratic(
    context: OwnerContext,
    model: ModelAsset,
    params: ParameterSet,
    features: list[Handle],
) -> Handle:
    p = model.parameters
    assert isinstance(p, PolyMLPParameters)
    s, w = params.scale_bits, params.weight_scale_bits
    a0, a1, a2 = (p.coefficient(d) for d in range(3))
    squares: list[Handle] = []
    linear: list[Handle] = []
    for k in range(p.hidden_count):
        z = context.dot(features, p.hidden_weights[k], float(p.hidden_bias[k]))
        v = float(p.output_weights[k])
        if _nonzero(v * a2, w):
            squares.append(context.times(context.square(z), v * a2, w))
        if _nonzero(v * a1, s + 2 * w):
            linear.append(context.times(z, v * a1, s + 2 * w))
    terms = squares + linear or [context.zero(params.top_scale_bits)]
    constant = p.output_bias + a0 * float(p.output_weights.sum())
    result = context.add(terms, constant)
    return context.relinearize(result) if squares else result


def _nonzero(value: float, scale_bits: int) -> bool:
    """Whether ``value`` survives encoding at ``2**scale_bits`` (else SEAL refuses
    the product as transparent)."""
    return abs(value) * 2.0**scale_bits >= 0.5
