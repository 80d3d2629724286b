"""What identifies a run, and the check of a relaunch against what its run directory recorded.

The identity is the resolved task config minus its volatile keys (logging, paths, cadences: what a
relaunch may change); its hash names the checkpoint lineage. Resuming (or skipping as finished) a
run that was started with a different identity would silently mix two runs, so it is refused,
listing the differing keys.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from specsweep.optim import hparam_defaults, hparam_owners, registered_optimizers
from specsweep.sweep.grid.run_id import foreign_optim_overrides, parse_override
from specsweep.sweep.rundir import RunConfigChanged, RunDir, config_hash, json_safe, load_latest_checkpoint

def container(cfg: DictConfig | Mapping[str, Any]) -> dict:
    """A resolved plain-dict copy of a config (or a config section)."""
    if isinstance(cfg, DictConfig):
        # Section by section, skipping `hydra`: its runtime fields are only set once a job runs,
        # while the task keys (run_id included) resolve against the whole composed config.
        out = {}
        for key in cfg:
            if key == "hydra":
                continue
            node = cfg[key]
            out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        return out
    return dict(cfg)


def optimizer_hparams(name: str, raw: Mapping[str, Any]) -> dict:
    """The builder's hyperparameters from an optim config section: ``name`` and the keys of other
    optimizers removed (the slots of conf/optim_shared/keys.yaml, e.g. rank_fraction or lion_betas
    of an adamw arm). So grid points that differ only in such a key are the same run (the sweeper
    launches it once); a key that no optimizer takes stays, and the builder refuses it."""
    hparams = {k: v for k, v in raw.items() if k != "name"}
    if name in registered_optimizers():
        accepted = hparam_defaults(name)
        for key in hparam_owners():
            if key not in accepted:
                hparams.pop(key, None)
    return hparams


def job_optimizer_hparams(name: str, raw: Mapping[str, Any], overrides: Sequence[str], *, grid: bool,
                          errors: list[str]) -> tuple[dict, list[str]]:
    """The job's optimizer_hparams, and its ``overrides`` without those of keys that optimizer
    ``name`` does not take but another does. A job of a grid (-m) ignores them: its other arms may
    take them (sweep.grid.preflight checks that one does); for a single run such an override is a
    mistake, appended to ``errors``. A plain-dict ``raw`` is trimmed in place to ``name`` and those
    hyperparameters: the run's recorded config (config.yaml, W&B) shows no other optimizer's slots."""
    foreign = foreign_optim_overrides(name, overrides)
    if not grid:
        errors += [f"{key}: not a hyper-parameter of {name} (only of {', '.join(owners)})"
                   for key, owners in foreign.items()]
    hparams = optimizer_hparams(name, raw)
    if isinstance(raw, dict):
        for key in [k for k in raw if k != "name" and k not in hparams]:
            del raw[key]
    return hparams, [o for o in overrides if parse_override(o)[0] not in foreign]


def identity_of(cfg: DictConfig | Mapping[str, Any]) -> dict:
    """The part of the resolved config that defines the run (volatile keys removed); ``cfg`` is left as it is."""
    raw = copy.deepcopy(container(cfg))
    optim_cfg = raw.get("optim")
    if isinstance(optim_cfg, dict) and isinstance(optim_cfg.get("name"), str):
        raw["optim"] = {"name": optim_cfg["name"], **optimizer_hparams(optim_cfg["name"], optim_cfg)}
    for dotted in raw.get("volatile_keys") or []:
        node: Any = raw
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return raw


def recorded_identity(run: RunDir) -> tuple[Any, str]:
    """What the directory says about the identity of its run, and where it says it.

    identity.json; if that is gone, the identity of the recorded config.yaml; else the config
    hash stored in the newest readable checkpoint (a str); ``(None, "")`` for a new directory.
    Reads only: a refused launch must not change the directory it refuses.
    """
    identity = run.read_identity()
    if identity is not None:
        return identity, str(run.identity_file)
    config = run.read_config()
    if config is not None:
        return json_safe(identity_of(config)), str(run.config_file)
    if run.checkpoints():
        state = load_latest_checkpoint(run, map_location="cpu")
        if state is not None and isinstance(state.get("config_hash"), str):
            return state["config_hash"], str(run.checkpoint_path(int(state["step"])))
    return None, ""


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = sorted(set(old) | set(new))
        out: list[str] = []
        for k in keys:
            out += _diff_keys(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_identity(run: RunDir, identity: Mapping[str, Any]) -> str:
    """Hash of ``identity``; raise RunConfigChanged if the directory holds another run."""
    digest = config_hash(identity)
    old, source = recorded_identity(run)
    if old is None:
        return digest
    old_digest = old if isinstance(old, str) else config_hash(old)
    if old_digest == digest:
        return digest
    if isinstance(old, str):
        detail = f"its checkpoint {source} was written under config hash {old}, this config hashes to {digest}"
    else:
        changes = _diff_keys(old, json_safe(dict(identity)))
        shown = "\n  ".join(changes[:20]) + ("\n  ..." if len(changes) > 20 else "")
        detail = f"changed keys (recorded in {Path(source).name}):\n  {shown}"
    raise RunConfigChanged(
        f"run directory {run.path} holds a run started with a different config; "
        f"refusing to resume it with this one. {detail}\n"
        "Use a new sweep_name (or paths.runs_root), add the key to the grid so it "
        "enters the run id, or delete the old run directory."
    )


def claim(run: RunDir, identity: Mapping[str, Any], config_yaml: str,
          run_id_record: Optional[Mapping[str, Any]] = None) -> str:
    """Check the identity (see check_identity), then record it (with the overrides behind the run
    id) and the resolved config; its hash."""
    digest = check_identity(run, identity)
    run.record_identity(identity, config_yaml, run_id_record)
    return digest
