"""One training run: set up from a validated spec, resume if possible, train, record, mark done."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from models import GPT, GPTConfig
from optim import build_optimizer, lr_factor
from sweep.run import distributed
from sweep.credentials import redact_text
from sweep.run.checkpoint import load_latest_checkpoint, prune_checkpoints, save_checkpoint, set_rng_state
from sweep.data.run_data import RunData, load_run_data
from sweep.run.distributed import SINGLE, DistEnv
from sweep.run.hold import Hold
from sweep.run.wandb_logger import NullLogger, make_logger, replay_after_resume, stable_wandb_id
from sweep.run.signals import StopRequest
from sweep.rundir import (STATUS_DIVERGED, STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED,
                          STATUS_REQUEUED, STATUS_RUNNING, JsonlAppender, RunDir, atomic_write_text,
                          config_hash, iter_jsonl, now_iso)
from sweep.grid.run_id import identity_overrides
from sweep.grid.spec import RunSpec, TrainSpec, build_run_spec, identity_of
from sweep.run.telemetry import Telemetry

log = logging.getLogger("specsweep.train")


@dataclass
class RunResult:
    run_id: str
    status: str
    final_step: int
    final_train_loss: Optional[float] = None
    final_eval_loss: Optional[float] = None


def pick_device(name: str, env: DistEnv = SINGLE) -> torch.device:
    return distributed.pick_device(name, env)


def run_axes(spec: RunSpec, model_cfg: GPTConfig, overrides: list[str], exclude: list[str]) -> dict[str, Any]:
    """The run's coordinates in the grid: what the fits group and plot by."""
    axes: dict[str, Any] = {
        "model": spec.model["name"],
        "optimizer": spec.optim_name,
        "rank_fraction": spec.optim_hparams.get("rank_fraction"),
        "ffn_width": model_cfg.ffn_hidden_dim,
        "ffn_mult": model_cfg.ffn_hidden_dim / model_cfg.d_model,
        "d_model": model_cfg.d_model,
        "n_layer": model_cfg.n_layer,
        "n_head": model_cfg.n_head,
        "activation": model_cfg.activation,
        "pos_encoding": model_cfg.pos_encoding,
        "norm_placement": model_cfg.norm_placement,
        "postln_frac": model_cfg.postln_frac,
        "steps": spec.train.steps,
        "seed": spec.seed,
    }
    # Other identifying overrides (e.g. optim.lr) become axes too, under their dotted name.
    for key, value in identity_overrides(overrides, exclude).items():
        if key.rsplit(".", 1)[-1] not in axes:  # train.steps is already the axis "steps"
            axes[key] = yaml.safe_load(value) if value else value
    return axes


class _Timer:
    """Wall time of the training steps alone, for tokens/s."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0

    @contextlib.contextmanager
    def measure(self, tokens: int, device: torch.device) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds += time.perf_counter() - t0
        self.tokens += tokens

    def rate_and_reset(self) -> float:
        rate = self.tokens / self.seconds if self.seconds > 0 else float("nan")
        self.tokens, self.seconds = 0, 0.0
        return rate


def _progress(spec: TrainSpec, start: int) -> Any:
    show = spec.progress if spec.progress != "auto" else sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=spec.steps, initial=start, unit="step", dynamic_ncols=True, leave=False)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: RunData, n_batches: int, device: torch.device,
             autocast: Any) -> float:
    """Mean loss over the fixed held-out batches (identical at every evaluation)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for x, y in data.eval_batches[:n_batches]:
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        total += float(loss)
    model.train(was_training)
    if distributed.active():  # every rank holds an equal share of each eval batch
        total = float(distributed.all_reduce_sum_(torch.tensor(total, dtype=torch.float64))) / torch.distributed.get_world_size()
    return total / n_batches


def train_run(cfg: DictConfig, run_path: Path) -> RunResult:
    """Train (or resume, or skip) the run described by ``cfg`` in ``run_path``.

    Nothing is written before the config is valid and the directory's recorded identity matches
    (a refused launch leaves the directory as it was, and removes it if Hydra just made it empty);
    a finished or diverged run is skipped without writing. Any failure after that is recorded in
    run.json (``failed`` with the error, or ``interrupted`` on Ctrl-C) before it propagates.
    """
    from hydra.core.hydra_config import HydraConfig

    run_dir = RunDir(run_path)
    try:
        spec = build_run_spec(cfg)
        identity = identity_of(cfg)
        run_dir.check_identity(identity)
    except BaseException:
        run_dir.remove_if_empty()
        raise
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    if run_dir.is_done():
        done = run_dir.read_done()
        log.info("run %s is already done (%s); skipped", spec.run_id, run_dir.path)
        return RunResult(spec.run_id, STATUS_DONE, done.get("final_step", spec.train.steps),
                         done.get("final_train_loss"), done.get("final_eval_loss"))
    status = run_dir.read_status()
    if status.get("status") == STATUS_DIVERGED:
        log.warning("run %s diverged at step %s earlier; skipped (delete %s to retry)",
                    spec.run_id, status.get("step"), run_dir.path)
        return RunResult(spec.run_id, STATUS_DIVERGED, int(status.get("step", 0)))

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    claimed = False

    def peer_failed(env: DistEnv, reason: str) -> None:  # another rank crashed, died or hung
        if claimed:
            run_dir.update_status(status=STATUS_FAILED, error=reason, final=True)

    # Several tasks of one job (one per GPU) train the run together; rank 0 alone writes its files.
    with distributed.session(spec.train.device, on_peer_failure=peer_failed) as dist_env, \
            contextlib.ExitStack() as beating:
        try:
            if dist_env.is_main:
                digest = run_dir.claim(identity, config_yaml)
                _record_hydra_job(run_dir, cfg)
                claimed = True
                # heartbeat.json lets sweep.status tell this live run from a killed one
                # (its step reads as None until `training` below exists)
                beating.enter_context(run_dir.heartbeat(dist_env.world_size, step=lambda: training.step))
            else:
                digest = run_dir.check_identity(identity)
            training = _Training(spec, cfg, run_dir, digest, overrides, dist_env)
        except BaseException as e:  # set-up failed (disk, data, model, device): `sweep.status` shows why
            if dist_env.is_main:
                record_stop(run_dir, e, run_id=spec.run_id, sweep=spec.sweep_name, config_hash=config_hash(identity))
            raise
        try:
            return training.run()
        finally:
            training.release()


def record_stop(run_dir: RunDir, error: BaseException, **fields: Any) -> None:
    """Mark the run ``failed`` with the error (``interrupted`` for Ctrl-C) in run.json.

    The recorded step is that of the newest checkpoint on disk: what a relaunch resumes from. If
    run.json itself cannot be written (read-only directory, disk full), say so in the log instead.
    """
    if isinstance(error, KeyboardInterrupt):
        fields.update(status=STATUS_INTERRUPTED, error="aborted (KeyboardInterrupt)")
    else:
        fields.update(status=STATUS_FAILED, error=redact_text(f"{type(error).__name__}: {error}"))
    try:
        run_dir.update_status(step=run_dir.checkpoint_step(), **fields)
    except OSError as e:
        log.error("could not record the run's end in %s: %s", run_dir.status_file, e)


def _record_hydra_job(run_dir: RunDir, cfg: DictConfig) -> None:
    """Hydra's record of the job (.hydra/config.yaml, hydra.yaml, overrides.yaml), written once the
    launch is accepted: ``hydra.output_subdir`` is null so that Hydra does not write it before the
    task runs (a refused launch would overwrite the record of the run it refuses)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = run_dir.path / ".hydra"
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))


class _Training:
    """State and loop of one run; split from train_run to keep each piece short."""

    def __init__(self, spec: RunSpec, cfg: DictConfig, run_dir: RunDir, digest: str, overrides: list[str],
                 dist_env: DistEnv = SINGLE) -> None:
        self.spec, self.cfg, self.run_dir, self.digest = spec, cfg, run_dir, digest
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
        rank_spec = dataclasses.replace(spec, train=dataclasses.replace(t, batch_size=t.batch_size // dist_env.world_size))
        self.data = load_run_data(rank_spec, rank=dist_env.rank, world_size=dist_env.world_size)
        torch.manual_seed(spec.seed)
        self.model_cfg = GPTConfig(**{**spec.model, "vocab_size": spec.model.get("vocab_size") or self.data.vocab_size})
        if self.model_cfg.vocab_size < self.data.vocab_size:
            raise ValueError(f"model.vocab_size={self.model_cfg.vocab_size} < data vocabulary {self.data.vocab_size}")
        self.model = GPT(self.model_cfg).to(self.device)
        # With several ranks, forward/backward go through DDP (gradients averaged across ranks).
        self.ddp: torch.nn.Module = self.model
        if dist_env.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward_model: torch.nn.Module = torch.compile(self.ddp) if t.compile else self.ddp
        self.optimizer = build_optimizer(self.model, spec.optim_name, **spec.optim_hparams)
        self.axes = run_axes(spec, self.model_cfg, overrides, list(cfg.get("run_id_exclude") or []))
        self.bf16 = self.device.type == "cuda"
        self.tokens_per_step = t.batch_size * t.grad_accum * t.seq_len
        self.step = 0
        self.elapsed = 0.0
        self.train_loss = float("nan")  # of the last step taken (restored on resume, for DONE)
        self.wandb_id = stable_wandb_id(spec.sweep_name, spec.run_id)
        self.hold = Hold.from_env(rank=dist_env.rank)  # SPECSWEEP_HOLD: tests stop a run at a known step

    def autocast(self) -> Any:
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- resume ---------------------------------------------------------------------------------
    def _resume(self) -> None:
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
        set_rng_state(state["rng"])
        if not self.main:
            return
        kept = self.run_dir.truncate_jsonl(self.run_dir.metrics_file, self.step)
        self.run_dir.truncate_jsonl(self.run_dir.spectra_file, self.step)
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

    def _checkpoint(self) -> None:
        save_checkpoint(self.run_dir, self.step, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "config_hash": self.digest, "wandb_id": self.wandb_id, "elapsed_s": self.elapsed,
            "train_loss": self.train_loss,
            "tokens": self.step * self.tokens_per_step, "data_position": self.step * self.spec.train.grad_accum,
        }, keep=self.spec.train.keep_checkpoints)

    # ---- main loop ------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train with the stop signals caught (sweep/run/signals.py): on SIGTERM, SIGINT or USR2 the run
        checkpoints at the next step boundary, then submitit's handler requeues the job (under
        SLURM, on a preemption) or the process exits."""
        with StopRequest() as self.stop:
            outcome, result = self._run()
            if outcome in (STATUS_REQUEUED, STATUS_INTERRUPTED):
                try:
                    self.stop.hand_over()  # does not return
                except Exception as e:  # submitit refused to requeue (e.g. too many time-outs)
                    if self.main:
                        self.run_dir.update_status(status=STATUS_INTERRUPTED, error=f"not requeued: {type(e).__name__}: {e}")
                    raise
            return result

    def _run(self) -> tuple[str, RunResult]:
        spec, t = self.spec, self.spec.train
        if not self.main:  # ranks > 0 compute and take part in collectives; rank 0 writes
            self._resume()
            return self._run_worker()
        outcome = STATUS_FAILED
        logger: Optional[NullLogger] = None
        metrics: Optional[JsonlAppender] = None
        telemetry: Optional[Telemetry] = None
        try:
            self._resume()
            self.run_dir.update_status(
                run_id=spec.run_id, sweep=spec.sweep_name, status=STATUS_RUNNING, config_hash=self.digest,
                axes=self.axes, step=self.step, error=None, wandb_id=self.wandb_id,
                optimizer_groups=self.optimizer.summary(), n_params=self.model.num_params(),
            )
            logger = make_logger(spec.logger, sweep_name=spec.sweep_name, run_id=spec.run_id,
                                 run_dir=self.run_dir.path, config=OmegaConf.to_container(self.cfg, resolve=True),
                                 axes=self.axes, wandb_id=self.wandb_id)
            metrics = JsonlAppender(self.run_dir.metrics_file)
            telemetry = Telemetry(
                self.model, spec.telemetry, self.data.counts, total_steps=t.steps,
                spectra_file=self.run_dir.spectra_file, eigen_dir=self.run_dir.eigen_dir,
                sink=lambda records: logger.log_spectra(records, int(records[0]["step"]), telemetry.logged_metrics),
                eigen_sink=logger.log_eigenvalues,
            )
            if self.step:  # resumed: W&B may have lost the rows in flight when the last attempt died
                replay_after_resume(logger, self.run_dir.metrics_file, self.run_dir.spectra_file,
                                    after_step=self.step - t.ckpt_every, metrics=telemetry.logged_metrics)
            outcome, result = self._loop(logger, metrics, telemetry)
            return outcome, result
        except BaseException as e:  # failed, or aborted by a second Ctrl-C: run.json says so
            record_stop(self.run_dir, e)
            raise
        finally:
            if telemetry is not None:
                telemetry.close()
            if metrics is not None:
                metrics.close()
            if logger is not None:
                logger.finish(exit_code=0 if outcome in (STATUS_DONE, STATUS_DIVERGED) else 1)

    def _loop(self, logger: NullLogger, metrics: JsonlAppender, telemetry: Telemetry) -> tuple[str, RunResult]:
        spec, t, model = self.spec, self.spec.train, self.model
        timer = _Timer()
        bar = _progress(t, self.step) if self.main else None
        train_loss = self.train_loss
        eval_loss: Optional[float] = None
        if self.step >= t.steps:  # resumed after the last checkpoint, before DONE: the final eval again
            eval_loss = evaluate(model, self.data, self.data.n_eval_batches, self.device, self.autocast)
        model.train()
        t_start = time.perf_counter() - self.elapsed
        while self.step < t.steps:
            step = self.step + 1
            lr_scale = lr_factor(step - 1, t.steps, t.warmup_steps, t.decay_frac)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_scale
            measure = telemetry.due(step)
            on_train_tokens = measure and spec.telemetry.tokens == "train"
            fwd = self.ddp if on_train_tokens else self.forward_model  # hooks need the eager module
            with timer.measure(self.tokens_per_step, self.device):
                loss_sum = torch.zeros((), device=self.device)
                with telemetry.capturing(on_train_tokens):
                    for micro in range(t.grad_accum):
                        x, y = self.data.train.get((step - 1) * t.grad_accum + micro)
                        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                        if on_train_tokens:
                            telemetry.set_tokens(x)
                        with self._grad_sync(micro == t.grad_accum - 1):
                            with self.autocast():
                                _, loss = fwd(x, y)
                            (loss / t.grad_accum).backward()
                        loss_sum += loss.detach()
                clip = t.grad_clip if t.grad_clip else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
                train_loss, stop_now = self._reduce_step(loss_sum)
                # Checked before the update: the last checkpoint and the weights stay the last good state.
                if (not math.isfinite(train_loss) or not math.isfinite(grad_norm)
                        or (t.diverge_loss is not None and train_loss > t.diverge_loss)):
                    return self._diverged(step, train_loss, grad_norm, logger, metrics)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.step, self.train_loss = step, train_loss
            self.elapsed = time.perf_counter() - t_start
            last = step == t.steps
            if measure:
                if spec.telemetry.tokens == "probe":
                    telemetry.measure_probe(model, self.data.probe_batches(spec.telemetry.probe_batches),
                                            self.device, self.autocast)
                telemetry.finish_event(step)
            if step == 1 or step % t.log_every == 0 or last:
                row = {"step": step, "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
                       "tokens": step * self.tokens_per_step, "tokens_per_s": timer.rate_and_reset(),
                       "grad_norm": grad_norm, "elapsed_s": self.elapsed}
                metrics.write(row)
                logger.log(row, step)
                log.info("%s step %d/%d loss %.4f lr %.2e %.0f tok/s", spec.run_id, step, t.steps,
                         train_loss, row["lr"], row["tokens_per_s"])
            if step % t.eval_every == 0 or last:
                eval_loss = evaluate(model, self.data, self.data.n_eval_batches, self.device, self.autocast)
                row = {"step": step, "eval_loss": eval_loss, "eval_ppl": math.exp(min(eval_loss, 50.0)),
                       "tokens": step * self.tokens_per_step}
                metrics.write(row)
                logger.log(row, step)
            if step % t.ckpt_every == 0 or last:
                telemetry.drain()  # spectra up to this step are on disk before the checkpoint is
                if self.main:
                    self._checkpoint()
                    self.run_dir.update_status(step=step)
            if bar is not None:
                bar.update(1)
                rate = bar.format_dict.get("rate") or 0.0  # steps/s, smoothed by tqdm
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{rate * self.tokens_per_step:,.0f}")
            if self.hold is not None:
                self.hold.at(step, lambda: self.stop.requested)
            if not last and (stop_now or (not self.dist.enabled and self.stop.requested)):
                if bar is not None:
                    bar.close()
                return self._stopped(telemetry, saved=step % t.ckpt_every == 0)
        if bar is not None:
            bar.close()
        summary = {"run_id": spec.run_id, "final_step": self.step, "final_train_loss": train_loss,
                   "final_eval_loss": eval_loss, "wall_s": self.elapsed, "axes": self.axes}
        logger.summary({"final/eval_loss": eval_loss, "final/train_loss": train_loss,
                        "final/step": self.step, **telemetry.summary()})
        if self.main:
            prune_checkpoints(self.run_dir, t.keep_checkpoints)  # also after a resume at the last step
            self.run_dir.update_status(status=STATUS_DONE, step=self.step)
            self.run_dir.write_done(summary)
        log.info("run %s done: eval loss %.4f, %s", spec.run_id, eval_loss or float("nan"), self.run_dir.path)
        return STATUS_DONE, RunResult(spec.run_id, STATUS_DONE, self.step, train_loss, eval_loss)

    def _diverged(self, step: int, loss: float, grad_norm: float, logger: NullLogger,
                  metrics: JsonlAppender) -> tuple[str, RunResult]:
        """Record a divergence (found before the step's update); the last good checkpoint stays."""
        metrics.write({"step": step, "train_loss": loss, "grad_norm": grad_norm, "diverged": True})
        logger.log({"train_loss": loss, "diverged": 1}, step)
        if self.main:
            self.run_dir.update_status(status=STATUS_DIVERGED, step=step,
                                       error=f"train loss {loss}, gradient norm {grad_norm} at step {step}")
        log.error("run %s diverged at step %d (loss %s, gradient norm %s); not applied, last checkpoint kept",
                  self.spec.run_id, step, loss, grad_norm)
        return STATUS_DIVERGED, RunResult(self.spec.run_id, STATUS_DIVERGED, step, loss, None)

    # ---- several ranks, preemption ----------------------------------------------------------------
    def release(self) -> None:
        """Drop the DDP wrapper while its process group still exists. Freed later, its reducer would
        hold the group's last reference and destroy it, which can deadlock with gloo's worker thread
        (the destructor joins the thread while holding the GIL the thread needs)."""
        if self.ddp is not self.model:
            self.forward_model = self.ddp = self.model
            import gc

            gc.collect()

    def _run_worker(self) -> tuple[str, RunResult]:
        """The loop of a rank > 0: same steps and collectives as rank 0, no files, no logger."""
        t = self.spec.train
        telemetry = Telemetry(self.model, self.spec.telemetry, self.data.counts, total_steps=t.steps,
                              spectra_file=self.run_dir.spectra_file, eigen_dir=self.run_dir.eigen_dir,
                              write=False)
        try:
            return self._loop(NullLogger(), _NullAppender(), telemetry)  # type: ignore[arg-type]
        finally:
            telemetry.close()

    def _grad_sync(self, sync: bool) -> Any:
        """DDP averages gradients on the last micro-batch of a step only."""
        if sync or self.ddp is self.model:
            return contextlib.nullcontext()
        return self.ddp.no_sync()  # type: ignore[operator]

    def _reduce_step(self, loss_sum: torch.Tensor) -> tuple[float, bool]:
        """Mean train loss over micro-batches and ranks, and whether any rank was asked to stop.

        One all-reduce per step: every rank must see the same loss (divergence) and stop at the
        same step, whichever rank the signal reached first.
        """
        n = self.spec.train.grad_accum
        if not self.dist.enabled:
            return float(loss_sum) / n, False
        stats = torch.stack([loss_sum.float(), torch.tensor(float(self.stop.requested), device=loss_sum.device)])
        distributed.all_reduce_sum_(stats)
        return float(stats[0]) / (n * self.dist.world_size), bool(stats[1] > 0)

    def _stopped(self, telemetry: Telemetry, saved: bool) -> tuple[str, RunResult]:
        """A stop signal at a step boundary: checkpoint, record, then run() hands over or exits."""
        telemetry.drain()
        if self.main and not saved:
            self._checkpoint()
        status = STATUS_REQUEUED if self.stop.will_requeue() else STATUS_INTERRUPTED
        if self.main:
            self.run_dir.update_status(status=status, step=self.step)
        distributed.barrier()  # checkpoint and status are on disk before any rank leaves
        log.warning("run %s got %s: stopped at step %d, checkpoint written; %s", self.spec.run_id,
                    signal.Signals(self.stop.received or self.stop.signum).name, self.step,
                    "the job is requeued and resumes from it" if status == STATUS_REQUEUED
                    else "relaunch the same command to resume")
        return status, RunResult(self.spec.run_id, status, self.step)


class _NullAppender:
    def write(self, row: Any) -> None:
        pass

    def write_many(self, rows: Any) -> None:
        pass

    def close(self) -> None:
        pass
