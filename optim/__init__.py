"""Optimizers of specsweep: builders by name, param-group routing, the paper's LR schedule.

Plain PyTorch: no configs, files or logging. `build_optimizer(model, name, **hparams)` where
the hparams are the keys of conf/optim/<name>.yaml (minus `name`).
"""

from specsweep.optim.bundle import OptimizerBundle
from specsweep.optim.dion import Dion
from specsweep.optim.lion import Lion
from specsweep.optim.muon import Muon
from specsweep.optim.newton_schulz import KELLER_NS_COEFFICIENTS, PAPER_NS_COEFFICIENTS, newton_schulz
from specsweep.optim.normuon import NorMuon
from specsweep.optim.registry import (
    build_optimizer,
    hparam_defaults,
    hparam_owners,
    optimizer_tag,
    register,
    registered_optimizers,
)
from specsweep.optim.routing import ROLES, route_parameters
from specsweep.optim.schedule import lr_factor, set_lr

__all__ = [
    "Dion",
    "KELLER_NS_COEFFICIENTS",
    "Lion",
    "Muon",
    "NorMuon",
    "OptimizerBundle",
    "PAPER_NS_COEFFICIENTS",
    "ROLES",
    "build_optimizer",
    "hparam_defaults",
    "hparam_owners",
    "lr_factor",
    "newton_schulz",
    "optimizer_tag",
    "register",
    "registered_optimizers",
    "route_parameters",
    "set_lr",
]
