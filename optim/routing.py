"""Route a model's parameters to optimizer roles by NAME (embeddings and the head are 2-D too).

Roles:
  matrix    - weights with ndim >= 2 inside `blocks.` (attention and FFN projections)
  embedding - `wte`, `wpe`
  head      - `lm_head`
  scalar    - everything else (norm gains, biases, 1-D or 0-D tensors, unknown top-level params)

Block tensors with ndim > 2 are routed to `matrix` on purpose: a matrix optimizer then refuses
them at build time instead of the tensor silently falling back to the scalar optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

ROLES = ("matrix", "embedding", "head", "scalar")
EMBEDDING_MODULES = ("wte", "wpe")
HEAD_MODULES = ("lm_head",)
BLOCKS_MODULE = "blocks"
# prefixes added by torch.compile and (F)DDP wrappers, stripped before routing
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def canonical_name(name: str) -> str:
    """Strip wrapper prefixes (`_orig_mod.`, `module.`) from a parameter name."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def role_of(name: str, param: nn.Parameter) -> str:
    """The role of one parameter given its (possibly wrapped) name."""
    top = canonical_name(name).split(".", 1)[0]
    if top in EMBEDDING_MODULES:
        return "embedding"
    if top in HEAD_MODULES:
        return "head"
    if top == BLOCKS_MODULE and param.ndim >= 2:
        return "matrix"
    return "scalar"


@dataclass
class RoutedParams:
    """Trainable parameters per role, as (name, parameter) pairs in model order."""

    groups: dict[str, list[tuple[str, nn.Parameter]]] = field(
        default_factory=lambda: {role: [] for role in ROLES}
    )

    def params(self, role: str) -> list[nn.Parameter]:
        return [p for _, p in self.groups[role]]

    def counts(self, role: str) -> tuple[int, int]:
        """(number of tensors, number of scalars) in a role."""
        ps = self.params(role)
        return len(ps), sum(p.numel() for p in ps)

    def d_model(self) -> int | None:
        """Model width read off the head (or the token embedding): the head lr scales by it."""
        for role, axis in (("head", 1), ("embedding", 1)):
            for name, p in self.groups[role]:
                if p.ndim == 2 and (role == "head" or canonical_name(name).startswith("wte")):
                    return int(p.shape[axis])
        return None


def route_parameters(model: nn.Module) -> RoutedParams:
    """Split the trainable parameters of `model` into the four roles (frozen ones are skipped)."""
    routed = RoutedParams()
    for name, param in model.named_parameters():
        if param.requires_grad:
            routed.groups[role_of(name, param)].append((name, param))
    if not any(routed.groups.values()):
        raise ValueError("model has no trainable parameters")
    return routed
