"""Private inference with CKKS: a buyer scores its rows against an owner's model."""

from protocols.ckks.backend import BuyerKeys, CkksBackend, OwnerContext
from protocols.ckks.buyer import CkksBuyer
from protocols.ckks.config import InferenceConfig, plan_inference
from protocols.ckks.flooding import FloodPlan
from protocols.ckks.messages import CONTEXT, FEATURES, SCORES, STAGES
from protocols.ckks.owner import CkksOwner
from protocols.ckks.params import (
    ALLOWED_SETS,
    ParameterSet,
    choose_parameters,
    parameter_set,
)
from protocols.ckks.simulate import run_in_process
from protocols.ckks.tenseal_backend import TENSEAL, TenSealBackend

__all__ = [
    "ALLOWED_SETS",
    "CONTEXT",
    "FEATURES",
    "SCORES",
    "STAGES",
    "TENSEAL",
    "BuyerKeys",
    "CkksBackend",
    "CkksBuyer",
    "CkksOwner",
    "FloodPlan",
    "InferenceConfig",
    "OwnerContext",
    "ParameterSet",
    "TenSealBackend",
    "choose_parameters",
    "parameter_set",
    "plan_inference",
    "run_in_process",
]
