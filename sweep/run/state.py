"""What a run trains and where it stands: device, data, model, optimizer, step; resume and checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from specsweep.models import GPT
from specsweep.optim import build_optimizer
from specsweep.sweep.data.run_data import load_run_data
from specsweep.sweep.grid.spec import RunSpec
from specsweep.sweep.run.checkpoint import save_checkpoint, set_rng_state
from specsweep.sweep.run.distributed import SINGLE, DistEnv, pick_device
from specsweep.sweep.run.event_timing import event_lag
from specsweep.sweep.run.hold import Hold
from specsweep.sweep.run.telemetry_costs import COST_PREFIX
from specsweep.sweep.rundir import RunDir, iter_jsonl, load_latest_checkpoint, now_iso
from specsweep.sweep.wandb_keys import stable_wandb_id

log = logging.getLogger("specsweep.train")


class TrainingState:
    """Device, data, model (DDP-wrapped with several ranks), optimizer and the position of one run."""

    def __init__(self, spec: RunSpec, run_dir: RunDir, digest: str, dist_env: DistEnv = SINGLE) -> None:
        # train.global_batch: the micro-batches per step follow from this job's ranks (the loop
        # reads train.batch_size and train.grad_accum of the split spec)
        spec = dataclasses.replace(spec, train=spec.train.split(dist_env.world_size))
        self.spec, self.run_dir, self.digest = spec, run_dir, digest
        self.dist, self.main = dist_env, dist_env.is_main
        t = spec.train
        if t.num_threads:
            torch.set_num_threads(int(t.num_threads))
        self.device = pick_device(t.device, dist_env)
        # train.batch_size is the global micro-batch: each rank loads its share of the same rows, so
        # a run means the same thing (and resumes) on any number of GPUs.
        if t.batch_size % dist_env.world_size:
            raise ValueError(f"train.batch_size={t.batch_size} (sequences per micro-batch, all ranks together) "
                             f"is not divisible by the {dist_env.world_size} tasks of this job")
        if t.global_batch is not None:
            log.info("global batch %d sequences = %d micro-batches x %d ranks x %d sequences",
                     t.global_batch, t.grad_accum, dist_env.world_size, t.batch_size // dist_env.world_size)
        self.data = load_run_data(spec.data, spec.data_root, seed=spec.seed,
                                  batch_size=t.batch_size // dist_env.world_size, seq_len=t.seq_len,
                                  eval_batches=t.eval_batches, rank=dist_env.rank, world_size=dist_env.world_size,
                                  step_accum=t.grad_accum if t.global_batch is not None else None)
        torch.manual_seed(spec.seed)
        self.model = GPT(spec.model_config(self.data.vocab_size)).to(self.device)
        # With several ranks, forward/backward go through DDP (gradients averaged across ranks).
        self.ddp: torch.nn.Module = self.model
        if dist_env.enabled:
            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward_model: torch.nn.Module = torch.compile(self.ddp) if t.compile else self.ddp
        self.optimizer = build_optimizer(self.model, spec.optimizer.name, **spec.optimizer.hparams)
        self.bf16 = self.device.type == "cuda"
        self.tokens_per_step = t.batch_size * t.grad_accum * t.seq_len
        self.step = 0
        self.elapsed = 0.0
        self.train_loss = float("nan")  # of the last step taken (restored on resume, for DONE)
        self.telemetry_state: dict | None = None  # Telemetry.state_dict() of the checkpoint resumed from
        self.wandb_id = stable_wandb_id(spec.sweep_name, spec.run_id)
        self.hold = Hold.from_env(rank=dist_env.rank)  # SPECSWEEP_HOLD: tests stop a run at a known step

    def autocast(self) -> Any:
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def grad_sync(self, sync: bool) -> Any:
        """DDP averages gradients on the last micro-batch of a step only."""
        if sync or self.ddp is self.model:
            return contextlib.nullcontext()
        return self.ddp.no_sync()  # type: ignore[operator]

    def release(self) -> None:
        """Drop the DDP wrapper while its process group still exists. Freed later, its reducer would
        hold the group's last reference and destroy it, which can deadlock with gloo's worker thread
        (the destructor joins the thread while holding the GIL the thread needs)."""
        if self.ddp is not self.model:
            self.forward_model = self.ddp = self.model
            gc.collect()

    # ---- resume ---------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the newest readable checkpoint (unreadable ones set aside), or start afresh."""
        unreadable: list[Path] = []
        state = load_latest_checkpoint(self.run_dir, map_location=self.device, unreadable=unreadable)
        if unreadable and self.main:
            self._set_aside(unreadable, restart=state is None)
        if state is None:
            # A fresh start: anything logged by an attempt that never checkpointed is dropped.
            for f in (self.run_dir.metrics_file, self.run_dir.spectra_file) if self.main else ():
                f.unlink(missing_ok=True)
            return
        ckpt = self.run_dir.checkpoint_path(int(state["step"]))
        if state.get("config_hash") != self.digest:
            raise RuntimeError(f"checkpoint {ckpt} was written under config hash {state.get('config_hash')}, "
                               f"this run's config hashes to {self.digest}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.wandb_id = state.get("wandb_id", self.wandb_id)
        self.telemetry_state = state.get("telemetry")
        set_rng_state(state["rng"])
        if not self.main:
            return
        # the event labelled c is measured after a checkpoint at c < N when events lag their step
        events_to = self.step - (event_lag(self.spec.telemetry) if self.step < self.spec.train.steps else 0)
        kept = self.run_dir.truncate_jsonl(self.run_dir.metrics_file, self.step, lambda row: (
            events_to if any(k.startswith(COST_PREFIX) for k in row) else self.step))
        self.run_dir.truncate_jsonl(self.run_dir.spectra_file, events_to)
        loss = state.get("train_loss")
        self.train_loss = float(loss) if loss is not None else self._logged_train_loss(self.step)
        log.info("resumed %s from step %d (%d metric rows kept)", self.spec.run_id, self.step, kept)

    def _logged_train_loss(self, step: int) -> float:
        """The train loss logged at ``step`` (checkpoints without one), NaN if there is none."""
        rows = [r for r in iter_jsonl(self.run_dir.metrics_file) if r.get("step") == step and "train_loss" in r]
        value = rows[-1]["train_loss"] if rows else None
        return float(value) if value is not None else float("nan")

    def _set_aside(self, paths: list[Path], restart: bool) -> None:
        """Rename unreadable checkpoints to ``*.unreadable``: kept for a look, out of the way of
        pruning and of the next resume. Losing every checkpoint is a restart: said loudly, recorded."""
        moved = []
        for p in paths:
            target = p.with_name(p.name + ".unreadable")
            try:
                os.replace(p, target)
                moved.append(str(target))
            except OSError as e:
                log.warning("could not rename %s: %s", p, e)
                moved.append(str(p))
        if not restart:
            return
        log.error("run %s: every checkpoint is unreadable (%s); training RESTARTS FROM STEP 0",
                  self.spec.run_id, ", ".join(moved))
        restarts = list(self.run_dir.read_status().get("restarts") or [])
        restarts.append({"at": now_iso(), "from_step": 0, "reason": "every checkpoint is unreadable", "files": moved})
        self.run_dir.update_status(restarts=restarts)

    def checkpoint(self, telemetry: dict | None = None) -> None:
        """Save the run at its step; ``telemetry``: the telemetry's state (cadence, totals), plain data."""
        save_checkpoint(self.run_dir, self.step, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "config_hash": self.digest, "wandb_id": self.wandb_id, "elapsed_s": self.elapsed,
            "train_loss": self.train_loss,
            "tokens": self.step * self.tokens_per_step, "data_position": self.step * self.spec.train.grad_accum,
            "telemetry": telemetry,
        }, keep=self.spec.train.keep_checkpoints)
