"""The step loop of one run and its endings: done, diverged, stopped by a signal, failed.

Step s (1-based) uses batches ``(s-1)*grad_accum + micro`` of the stateless loader, so the data
position is the step. Which forward a telemetry event measures: sweep/run/event_timing.py.
Rank 0 writes every file; other ranks compute and join the collectives.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from specsweep.optim import lr_factor, set_lr
from specsweep.sweep.credentials import redact_text
from specsweep.sweep.data.run_data import RunData
from specsweep.sweep.run import distributed
from specsweep.sweep.run.signals import StopRequest
from specsweep.sweep.run.state import TrainingState
from specsweep.sweep.run.event_timing import after_step_event, train_event
from specsweep.sweep.run.telemetry import Telemetry
from specsweep.sweep.run.wandb_logger import NullLogger, make_logger, replay_after_resume
from specsweep.sweep.rundir import (STATUS_DIVERGED, STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_REQUEUED,
                          STATUS_RUNNING, JsonlAppender, RunDir, RunDirError, prune_checkpoints)

log = logging.getLogger("specsweep.train")


@dataclass
class RunResult:
    run_id: str
    status: str
    final_step: int
    final_train_loss: Optional[float] = None
    final_eval_loss: Optional[float] = None


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
    except (OSError, RunDirError) as e:  # e.g. disk full, or run.json itself unreadable
        log.error("could not record the run's end in %s: %s", run_dir.status_file, e)


class _Timer:
    """Wall time of the training steps alone, for tokens/s."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self.last = 0.0  # the last step's seconds

    @contextlib.contextmanager
    def measure(self, tokens: int, device: torch.device) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.last = time.perf_counter() - t0
        self.seconds += self.last
        self.tokens += tokens

    def rate_and_reset(self) -> float:
        rate = self.tokens / self.seconds if self.seconds > 0 else float("nan")
        self.tokens, self.seconds = 0, 0.0
        return rate


def _progress(show: Any, steps: int, start: int) -> Any:
    show = show if show != "auto" else sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm  # only with a progress bar

    return tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True, leave=False)


def _console_beside(bar: Any) -> Any:
    """While a progress bar is shown, console log records go through tqdm.write (above the bar)
    instead of being printed into the bar's line; the run's log file is untouched."""
    if bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


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


class _NullAppender:
    def write(self, row: Any) -> None:
        pass

    def write_many(self, rows: Any) -> None:
        pass

    def close(self) -> None:
        pass


class TrainingLoop:
    """Train ``state`` to its last step, or until it diverges or a stop signal arrives."""

    def __init__(self, state: TrainingState) -> None:
        self.state = state
        self.spec, self.run_dir, self.main = state.spec, state.run_dir, state.main

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
            if self.stop.requested and not self.stop.requeues:
                # The signal came during the last step: the run finished (DONE), and the process
                # still stops, so that a grid trained in this process (-m, basic launcher) starts
                # no further run.
                log.info("stop signal %s during the last step: the run finished; exiting",
                         signal.Signals(self.stop.received).name)
                raise SystemExit(128 + int(self.stop.received))
            return result

    def _run(self) -> tuple[str, RunResult]:
        spec, t, st = self.spec, self.spec.train, self.state
        if not self.main:  # ranks > 0 compute and take part in collectives; rank 0 writes
            st.resume()
            return self._run_worker()
        outcome = STATUS_FAILED
        logger: Optional[NullLogger] = None
        metrics: Optional[JsonlAppender] = None
        telemetry: Optional[Telemetry] = None
        aborted: Optional[BaseException] = None
        try:
            st.resume()
            self.run_dir.update_status(
                run_id=spec.run_id, sweep=spec.sweep_name, status=STATUS_RUNNING, config_hash=st.digest,
                axes=spec.axes, step=st.step, error=None, wandb_id=st.wandb_id,
                optimizer_groups=st.optimizer.summary(), n_params=st.model.num_params(),
            )
            logger = make_logger(spec.logger, sweep_name=spec.sweep_name, run_id=spec.run_id,
                                 run_dir=self.run_dir.path, config=spec.config, axes=spec.axes,
                                 wandb_id=st.wandb_id)
            metrics = JsonlAppender(self.run_dir.metrics_file)

            def log_cost(row: dict) -> None:  # one cost row per telemetry event
                metrics.write(row)
                logger.log(row, row["step"])

            telemetry = self._telemetry(
                sink=lambda records: logger.log_spectra(records, int(records[0]["step"]), telemetry.logged_metrics),
                eigen_sink=logger.log_eigenvalues, cost_sink=log_cost,
            )
            if st.step:  # resumed: W&B may have lost the rows in flight when the last attempt died
                replay_after_resume(logger, self.run_dir.metrics_file, self.run_dir.spectra_file,
                                    after_step=st.step - t.ckpt_every, metrics=telemetry.logged_metrics)
            outcome, result = self._loop(logger, metrics, telemetry)
            return outcome, result
        except BaseException as e:  # failed, or aborted by a second Ctrl-C: run.json says so
            aborted = e
            record_stop(self.run_dir, e)
            raise
        finally:
            if telemetry is not None:  # a second Ctrl-C does not wait for decompositions
                telemetry.close(drain=not isinstance(aborted, KeyboardInterrupt))
            if metrics is not None:
                metrics.close()
            if logger is not None:
                logger.finish(exit_code=0 if outcome in (STATUS_DONE, STATUS_DIVERGED) else 1)

    def _run_worker(self) -> tuple[str, RunResult]:
        """The loop of a rank > 0: same steps and collectives as rank 0, no files, no logger."""
        telemetry = self._telemetry(write=False)
        try:
            return self._loop(NullLogger(), _NullAppender(), telemetry)  # type: ignore[arg-type]
        finally:
            telemetry.close()  # no collective here: the loop drained before every normal ending

    def _telemetry(self, **io: Any) -> Telemetry:
        """This run's telemetry (every rank builds one; ``io``: where rank 0 writes, or write=False)."""
        st, t = self.state, self.spec.train
        return Telemetry(st.model, self.spec.telemetry, st.data.counts, total_steps=t.steps, ckpt_every=t.ckpt_every,
                         spectra_file=self.run_dir.spectra_file, eigen_dir=self.run_dir.eigen_dir,
                         state=st.telemetry_state, grad_accum=t.grad_accum, **io)

    def _loop(self, logger: NullLogger, metrics: JsonlAppender, telemetry: Telemetry) -> tuple[str, RunResult]:
        bar = _progress(self.spec.train.progress, self.spec.train.steps, self.state.step) if self.main else None
        with _console_beside(bar):
            try:
                return self._steps(logger, metrics, telemetry, bar)
            finally:
                if bar is not None:
                    bar.close()

    def _steps(self, logger: NullLogger, metrics: JsonlAppender, telemetry: Telemetry,
               bar: Any) -> tuple[str, RunResult]:
        spec, t, st = self.spec, self.spec.train, self.state
        model, device = st.model, st.device
        timer = _Timer()
        train_loss = st.train_loss
        eval_loss: Optional[float] = None
        if st.step >= t.steps:  # resumed after the last checkpoint, before DONE: the final eval again
            eval_loss = evaluate(model, st.data, st.data.n_eval_batches, device, st.autocast)
        elif st.step == 0 and t.eval_at_start:  # the initial model's loss (the paper evaluates at step 0)
            self._write_eval(0, evaluate(model, st.data, st.data.n_eval_batches, device, st.autocast), logger, metrics)
        model.train()
        t_start = time.perf_counter() - st.elapsed
        while st.step < t.steps:
            step = st.step + 1
            set_lr(st.optimizer, lr_factor(step - 1, t.steps, t.warmup_steps, t.decay_frac))
            event = train_event(spec.telemetry, t.steps, step)  # what this step's forward measures, if any
            on_train_tokens = event is not None
            fwd = st.ddp if on_train_tokens else st.forward_model  # hooks need the eager module
            with timer.measure(st.tokens_per_step, device):
                loss_sum = torch.zeros((), device=device)
                with telemetry.capturing(on_train_tokens):
                    for micro in range(t.grad_accum):
                        x, y = st.data.train.get((step - 1) * t.grad_accum + micro)
                        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                        if on_train_tokens:
                            telemetry.set_tokens(x, micro)
                        with st.grad_sync(micro == t.grad_accum - 1):
                            with st.autocast():
                                _, loss = fwd(x, y)
                            (loss / t.grad_accum).backward()
                        loss_sum += loss.detach()
                clip = t.grad_clip if t.grad_clip else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
                train_loss, stop_now = self._reduce_step(loss_sum)
                # Checked before the update: the last checkpoint and the weights stay the last good state.
                if (not math.isfinite(train_loss) or not math.isfinite(grad_norm)
                        or (t.diverge_loss is not None and train_loss > t.diverge_loss)):
                    return self._diverged(step, train_loss, grad_norm, logger, metrics, telemetry)
                st.optimizer.step()
                st.optimizer.zero_grad(set_to_none=True)
            if t.compile:  # a telemetry step on the eager module: its extra time counts as telemetry
                telemetry.note_compiled_step(event if event is not None else step, timer.last, event=on_train_tokens)
            st.step, st.train_loss = step, train_loss
            st.elapsed = time.perf_counter() - t_start
            last = step == t.steps
            if event is not None:
                telemetry.finish_event(event)
            if after_step_event(spec.telemetry, t.steps, step):  # a no-grad eval-mode pass after the update
                batches = (st.data.probe_batches(spec.telemetry.probe_batches) if spec.telemetry.tokens == "probe"
                           else [st.data.train.get(step * t.grad_accum + m) for m in range(t.grad_accum)])
                extra = time.perf_counter()
                telemetry.measure_probe(model, batches, device, st.autocast)
                telemetry.note_extra_forward(step, time.perf_counter() - extra)
                telemetry.finish_event(step)
            if step == 1 or step % t.log_every == 0 or last:
                row = {"step": step, "train_loss": train_loss, "lr": st.optimizer.param_groups[0]["lr"],
                       "tokens": step * st.tokens_per_step, "tokens_per_s": timer.rate_and_reset(),
                       "grad_norm": grad_norm, "elapsed_s": st.elapsed}
                metrics.write(row)
                logger.log(row, step)
                log.info("%s step %d/%d loss %.4f lr %.2e %.0f tok/s", spec.run_id, step, t.steps,
                         train_loss, row["lr"], row["tokens_per_s"])
            if step % t.eval_every == 0 or last:
                eval_loss = evaluate(model, st.data, st.data.n_eval_batches, device, st.autocast)
                self._write_eval(step, eval_loss, logger, metrics)
            if step % t.ckpt_every == 0 or last:
                telemetry.drain()  # spectra up to this step are on disk before the checkpoint is
                if self.main:
                    st.checkpoint(telemetry=telemetry.state_dict())
                    self.run_dir.update_status(step=step)
            if bar is not None:
                bar.update(1)
                rate = bar.format_dict.get("rate") or 0.0  # steps/s, smoothed by tqdm
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{rate * st.tokens_per_step:,.0f}")
            if st.hold is not None:
                st.hold.at(step, lambda: self.stop.requested)
            if not last and (stop_now or (not st.dist.enabled and self.stop.requested)):
                return self._stopped(telemetry, saved=step % t.ckpt_every == 0)
        return self._done(train_loss, eval_loss, logger, telemetry)

    def _write_eval(self, step: int, eval_loss: float, logger: NullLogger, metrics: JsonlAppender) -> None:
        row = {"step": step, "eval_loss": eval_loss, "eval_ppl": math.exp(min(eval_loss, 50.0)),
               "tokens": step * self.state.tokens_per_step}
        metrics.write(row)
        logger.log(row, step)

    def _reduce_step(self, loss_sum: torch.Tensor) -> tuple[float, bool]:
        """Mean train loss over micro-batches and ranks, and whether any rank was asked to stop.

        One all-reduce per step: every rank must see the same loss (divergence) and stop at the
        same step, whichever rank the signal reached first.
        """
        n, dist = self.spec.train.grad_accum, self.state.dist
        if not dist.enabled:
            return float(loss_sum) / n, False
        stats = torch.stack([loss_sum.float(), torch.tensor(float(self.stop.requested), device=loss_sum.device)])
        distributed.all_reduce_sum_(stats)
        return float(stats[0]) / (n * dist.world_size), bool(stats[1] > 0)

    # ---- endings ----------------------------------------------------------------------------------
    def _done(self, train_loss: float, eval_loss: Optional[float], logger: NullLogger,
              telemetry: Telemetry) -> tuple[str, RunResult]:
        """The last step is taken: summary to W&B, old checkpoints pruned, DONE written last."""
        spec, st = self.spec, self.state
        summary = {"run_id": spec.run_id, "final_step": st.step, "final_train_loss": train_loss,
                   "final_eval_loss": eval_loss, "wall_s": st.elapsed, "axes": spec.axes}
        cost = telemetry.run_summary(st.elapsed)  # the whole run's telemetry share of wall time
        if cost is not None:
            summary["telemetry"] = cost
        logger.summary({"final/eval_loss": eval_loss, "final/train_loss": train_loss,
                        "final/step": st.step, **telemetry.summary(),
                        **{f"telemetry/{k}": v for k, v in (cost or {}).items()}})
        if self.main:
            prune_checkpoints(self.run_dir, spec.train.keep_checkpoints)  # also after a resume at the last step
            self.run_dir.update_status(status=STATUS_DONE, step=st.step)
            self.run_dir.write_done(summary)
        log.info("run %s done: eval loss %.4f, %s", spec.run_id, eval_loss or float("nan"), self.run_dir.path)
        return STATUS_DONE, RunResult(spec.run_id, STATUS_DONE, st.step, train_loss, eval_loss)

    def _diverged(self, step: int, loss: float, grad_norm: float, logger: NullLogger,
                  metrics: JsonlAppender, telemetry: Telemetry) -> tuple[str, RunResult]:
        """Record a divergence (found before the step's update); the last good checkpoint stays."""
        telemetry.drain()  # the events before it (every rank sees the divergence at the same step)
        # "diverged" below is a field of the metrics row and a W&B key, not a run status
        metrics.write({"step": step, "train_loss": loss, "grad_norm": grad_norm, "diverged": True})
        logger.log({"train_loss": loss, "diverged": 1}, step)
        if self.main:
            self.run_dir.update_status(status=STATUS_DIVERGED, step=step,
                                       error=f"train loss {loss}, gradient norm {grad_norm} at step {step}")
        log.error("run %s diverged at step %d (loss %s, gradient norm %s); not applied, last checkpoint kept",
                  self.spec.run_id, step, loss, grad_norm)
        return STATUS_DIVERGED, RunResult(self.spec.run_id, STATUS_DIVERGED, step, loss, None)

    def _stopped(self, telemetry: Telemetry, saved: bool) -> tuple[str, RunResult]:
        """A stop signal at a step boundary: checkpoint, record, then run() hands over or exits.

        The run is recorded ``interrupted`` as soon as its checkpoint is on disk, before waiting
        for a USR2 that may follow a SIGTERM (submitit): SLURM may kill the process during that
        wait, and the record must already be true then.
        """
        st = self.state
        telemetry.drain()
        if self.main and not saved:
            st.checkpoint(telemetry=telemetry.state_dict())
        if self.main:
            self.run_dir.update_status(status=STATUS_INTERRUPTED, step=st.step)
        log.warning("run %s got %s: stopped at step %d, checkpoint written", self.spec.run_id,
                    signal.Signals(self.stop.received or self.stop.signum).name, st.step)
        status = STATUS_REQUEUED if self.stop.will_requeue() else STATUS_INTERRUPTED
        if self.main and status == STATUS_REQUEUED:
            self.run_dir.update_status(status=status, step=st.step)
        distributed.barrier()  # checkpoint and status are on disk before any rank leaves
        if status == STATUS_REQUEUED:
            log.warning("run %s stopped at step %d, checkpoint written; the job is requeued and resumes from it",
                        self.spec.run_id, st.step)
        else:
            log.warning("run %s: relaunch the same command to resume from step %d", self.spec.run_id, st.step)
        return status, RunResult(self.spec.run_id, status, st.step)
