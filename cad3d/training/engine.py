"""The training engine: one loop for every model (a `TrainTask` adds the model, loss and metrics).

    engine = Engine(task, train_dataset, val_dataset, EngineConfig(epochs=10, out_dir="trained_models/vae"))
    report = engine.fit()

The engine owns epochs and steps, the optimizer and LR schedule, clipping, autocast, compile,
seeding, progress bars (rank 0), JSON logs, TensorBoard, checkpoints (`CheckpointManager`),
resume, SIGTERM/SIGINT, DDP under torchrun and an EMA of the weights (``ema_decay``; validation
then scores the EMA weights); the run folder (`run_folder`: its writer lock, a fresh start or the
file to resume, decided by rank 0; a failed save on rank 0 stops every rank at once). Invariants:
a task's randomness comes only from ``StepContext.generator``; the data order is a function of
(seed, epoch); every state that
decides the next step is in the checkpoint, so an interrupted-and-resumed CPU run ends
bit-identical to an uninterrupted one. A signal saves ``last`` after the current step and `fit`
raises `TrainingInterrupted`; ``max_steps`` saves the same way and returns the report.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cad3d.devices import resolve_device
from cad3d.training import distributed as D
from cad3d.training.ema import ema_weights, make_ema
from cad3d.training.rng import loader_seed, seed_everything, seed_worker
from cad3d.training.sampler import ResumableSampler
from cad3d.training.engine_config import PRECISIONS, EngineConfig, TrainingConfigError, TrainingInterrupted
from cad3d.training.run_folder import load_resume, open_run, write_run_json
from cad3d.training.run_state import EpochSums, Progress, make_grad_scaler, run_payload
from cad3d.training.tasks.base import StepContext, TrainEndError, TrainTask

logger = logging.getLogger(__name__)


class Engine:
    """Trains ``task`` on ``train_dataset`` (validated on ``val_dataset`` each epoch, if given)."""

    def __init__(self, task: TrainTask, train_dataset, val_dataset=None, config: Optional[EngineConfig] = None):
        self.task = task
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        if val_dataset is None and task.schema.monitor.startswith("val_"):
            # Nothing to validate on: "best" follows the training loss rather than never existing.
            task.schema = dataclasses.replace(task.schema, monitor="train_loss")
        self.config = config if config is not None else EngineConfig()
        self.out_dir = Path(self.config.out_dir)
        self._stop_signal: Optional[int] = None
        self._previous_handlers: dict[int, Any] = {}
        self.lock = None  # the run folder's writer lock (rank 0, during fit)
        self.resumed_from: Optional[Path] = None

    # -- public ---------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``config.epochs`` (or ``max_steps``); returns the training report.

        Raises `TrainingInterrupted` after SIGTERM/SIGINT (a resumable ``last`` is saved)."""
        cfg = self.config
        device_type = resolve_device(cfg.device).type
        self.dist = D.init_distributed(device_type)
        try:
            self.device = resolve_device(cfg.device, local_rank=self.dist.local_rank)
            self._install_signal_handlers()
            try:
                return self._fit()
            finally:
                self._restore_signal_handlers()
                if getattr(self, "_tb", None) is not None:
                    self._tb.close()
                if self.lock is not None:
                    self.lock.release()
                    self.lock = None
        finally:
            D.destroy_distributed(self.dist)

    # -- set-up ---------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, task, info = self.config, self.task, self.dist
        if len(self.train_dataset) == 0:
            raise TrainingConfigError("the training set is empty")
        seed_everything(cfg.seed)  # same initial weights on every rank (and as a 1-process run)
        self.modules: dict[str, nn.Module] = {k: m.to(self.device) for k, m in task.build_modules().items()}
        unknown = set(self.modules) - set(task.schema.module_keys)
        if unknown:
            raise TrainingConfigError(f"task {task.name!r} builds modules {sorted(unknown)} that schema.module_keys does not name")
        self.optimizer = task.configure_optimizer(self.modules, cfg.lr, cfg.weight_decay)
        self.ema = make_ema(self.modules, cfg.ema_decay)  # of the plain modules (never DDP/compiled)

        self.sampler = ResumableSampler(len(self.train_dataset), seed=cfg.seed, rank=info.rank, world_size=info.world_size, shuffle=cfg.shuffle)
        per_rank = self.sampler.num_samples
        self.steps_per_epoch = per_rank // cfg.batch_size if cfg.drop_last else -(-per_rank // cfg.batch_size)
        if self.steps_per_epoch == 0:
            raise TrainingConfigError(f"{per_rank} training samples per process give no full batch of {cfg.batch_size} (drop_last)")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = make_grad_scaler(self.device, cfg.precision)
        self.generator = torch.Generator(device=self.device)
        self._resume_choice = open_run(self)  # lock, then fresh start or what to resume: before any write
        self.loader = self._loader(self.train_dataset, self.sampler, cfg.drop_last)
        self.val_loader = None
        if self.val_dataset is not None and len(self.val_dataset) > 0:
            val_sampler = ResumableSampler(len(self.val_dataset), rank=info.rank, world_size=info.world_size, shuffle=False)
            self.val_loader = self._loader(self.val_dataset, val_sampler, False)
        self._tb = None
        if cfg.tensorboard and info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise TrainingConfigError(f"tensorboard=True needs the tensorboard package (pip install tensorboard): {exc}") from None
            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    def _loader(self, dataset, sampler: ResumableSampler, drop_last: bool) -> DataLoader:
        cfg = self.config
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=self.task.collate,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=seed_worker,
            generator=torch.Generator(),  # reseeded per epoch: worker seeds independent of resume
        )

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "none":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, self.total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _wrap(self) -> dict[str, nn.Module]:
        """The modules a training step calls: DDP-wrapped (if distributed and trainable), then
        compiled (if asked). Checkpoints always use the plain modules."""
        wrapped = {}
        for name, m in self.modules.items():
            w: nn.Module = m
            if self.dist.distributed and any(p.requires_grad for p in m.parameters()):
                ids = [self.device.index] if self.device.type == "cuda" else None
                w = nn.parallel.DistributedDataParallel(m, device_ids=ids)
            if self.config.compile:
                w = torch.compile(w)
            wrapped[name] = w
        return wrapped

    # -- the loop -------------------------------------------------------------------------
    def _fit(self) -> dict:
        cfg, info = self.config, self.dist
        self._setup()
        progress = Progress()
        sums = EpochSums(self.device)
        if self._resume_choice is not None:
            self.resumed_from = load_resume(self, self._resume_choice, progress, sums)
        else:
            seed_everything(cfg.seed + info.rank)
            self.generator.manual_seed(cfg.seed + info.rank)
        modules = self._wrap()
        self._last_tick = time.time()
        if info.is_main:
            logger.info(
                "training %s on %s (%s, world size %d): epochs %d, %d steps/epoch, batch %d/process",
                self.task.name, self.device, cfg.precision, info.world_size, cfg.epochs, self.steps_per_epoch, cfg.batch_size,
            )
        completed = False
        at_limit = cfg.max_steps is not None and progress.global_step >= cfg.max_steps
        if at_limit:
            logger.info("max_steps=%d already reached at step %d: nothing to train", cfg.max_steps, progress.global_step)
        while progress.epoch <= cfg.epochs and not at_limit:
            epoch = progress.epoch
            epoch_start = time.time() - progress.epoch_elapsed
            stop = self._train_epoch(epoch, modules, progress, sums)
            if stop == "signal" or (stop == "max_steps" and progress.batch_in_epoch < self.steps_per_epoch):
                self._stop_mid_epoch(stop, epoch, epoch_start, progress, sums)
                break
            sums = self._end_epoch(epoch, epoch_start, progress, sums)
            if self._stop_reason(progress) == "max_steps":
                logger.info("reached max_steps=%d at the end of epoch %d", cfg.max_steps, epoch)
                break
        else:
            completed = not at_limit
        return self._finish(progress, sums, completed)

    def _train_epoch(self, epoch: int, modules: dict[str, nn.Module], progress: Progress, sums: EpochSums) -> Optional[str]:
        """Train the rest of ``epoch``; returns why it stopped early ("signal", "max_steps") or None."""
        cfg, task, info = self.config, self.task, self.dist
        task.on_epoch_start(epoch, cfg.epochs)
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(min(progress.batch_in_epoch * cfg.batch_size, self.sampler.num_samples))
        self.loader.generator.manual_seed(loader_seed(cfg.seed, epoch, info.rank))
        for m in self.modules.values():
            m.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=progress.batch_in_epoch,
            desc=f"{task.name} epoch {epoch}/{cfg.epochs}",
            disable=not (cfg.progress and info.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        stop = None
        batches = iter(self.loader) if progress.batch_in_epoch < self.steps_per_epoch else iter(())
        for batch in batches:
            ctx = StepContext(epoch, progress.global_step, self.device, self.generator, cfg.precision, info.world_size, info.rank)
            batch = task.to_device(batch, self.device)
            loss, parts = self._step(modules, batch, ctx)
            sums.add(loss, parts, task.batch_size_of(batch))
            progress.batch_in_epoch += 1
            progress.global_step += 1
            bar.update(1)
            if progress.global_step % cfg.log_every == 0 and info.is_main:
                value = float(loss.detach())
                bar.set_postfix(loss=f"{value:.4g}", lr=f"{self.scheduler.get_last_lr()[0]:.3g}")
                if self._tb is not None:
                    self._tb.add_scalar("train/loss_step", value, progress.global_step)
                    self._tb.add_scalar("train/lr", self.scheduler.get_last_lr()[0], progress.global_step)
            stop = self._stop_reason(progress)
            if stop == "signal" or (stop == "max_steps" and progress.batch_in_epoch < self.steps_per_epoch):
                break
        bar.close()
        return stop

    def _step(self, modules: dict[str, nn.Module], batch: Any, ctx: StepContext) -> tuple[torch.Tensor, Mapping[str, Any]]:
        """One optimizer step: forward under autocast, (scaled) backward, clipping, step, LR."""
        cfg = self.config
        autocast_dtype = PRECISIONS[cfg.precision]
        with torch.amp.autocast(device_type=self.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss, parts = self.task.training_step(modules, batch, ctx)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for group in self.optimizer.param_groups for p in group["params"]], cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.modules)
        with warnings.catch_warnings():  # fp16: a step skipped for inf grads still counts
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()
        return loss, parts

    def _stop_mid_epoch(self, stop: str, epoch: int, epoch_start: float, progress: Progress, sums: EpochSums) -> None:
        """Save ``*_last`` mid-epoch; a signal then ends training with `TrainingInterrupted`."""
        info = self.dist
        progress.epoch_elapsed = time.time() - epoch_start
        self._tick(progress)
        payload = run_payload(self, progress, sums, epoch=epoch, complete=False, metrics={})
        path = D.on_main(lambda: self.manager.save_last(payload, epoch=epoch, global_step=progress.global_step), info,
                         "saving the checkpoint")
        path = path if info.is_main else None
        if stop == "signal":
            if info.is_main:
                logger.warning("stopped by %s after step %d; saved %s", signal.Signals(self._stop_signal).name, progress.global_step, path)
            raise TrainingInterrupted(path, self._stop_signal, epoch, progress.global_step)
        if info.is_main:
            logger.info("reached max_steps=%d in epoch %d; saved %s", self.config.max_steps, epoch, path)

    def _end_epoch(self, epoch: int, epoch_start: float, progress: Progress, sums: EpochSums) -> EpochSums:
        """Validate, log and checkpoint a finished epoch; returns the next epoch's sums. A signal
        that came meanwhile ends training with `TrainingInterrupted` after the save."""
        task, info = self.task, self.dist
        train_loss, parts = sums.means(info)
        metrics = {"train_loss": train_loss, **self._validate(epoch)}
        monitor = metrics.get(task.schema.monitor)
        if monitor is not None and not math.isnan(monitor):
            better = progress.best_metric is None or (monitor < progress.best_metric if task.schema.mode == "min" else monitor > progress.best_metric)
            if better:
                progress.best_metric = float(monitor)
        lr = self.scheduler.get_last_lr()[0]
        entry = {"epoch": epoch, "global_step": progress.global_step, **metrics, "parts": parts, "lr": lr,
                 "time": time.time() - epoch_start, **task.epoch_log_extras()}
        progress.epoch_log.append(entry)
        progress.loss_history.append(train_loss)
        progress.epoch += 1
        progress.batch_in_epoch = 0
        progress.epoch_elapsed = 0.0
        sums = EpochSums(self.device)
        self._tick(progress)
        payload = run_payload(self, progress, sums, epoch=epoch, complete=True, metrics=metrics)

        def save() -> None:  # rank 0; every rank stops if it fails (e.g. a full disk)
            self._log_epoch(entry, progress.epoch_log)
            self.manager.save_epoch(payload, epoch=epoch, global_step=progress.global_step, metrics=metrics)

        D.on_main(save, info, f"saving the checkpoint of epoch {epoch}")
        if self._stop_reason(progress) == "signal":  # also a signal that came during validation
            path = self.out_dir / task.schema.last_file if info.is_main else None
            if info.is_main:
                logger.warning("stopped by %s at the end of epoch %d; saved %s", signal.Signals(self._stop_signal).name, epoch, path)
            raise TrainingInterrupted(path, self._stop_signal, epoch, progress.global_step)
        return sums

    def _finish(self, progress: Progress, sums: EpochSums, completed: bool) -> dict:
        """The training report; a completed run also saves its final checkpoint and report file.
        Then (rank 0) the task's `on_train_end` (e.g. an export): its failure is in the report
        and raised, after every checkpoint is safe."""
        self._tick(progress)
        report = self._report(progress, completed)
        metrics = self._last_metrics(progress)
        final = None
        if completed:
            final = run_payload(self, progress, sums, epoch=progress.epoch - 1, complete=True, metrics=metrics)

        def finish() -> None:
            failure = None
            if final is not None:
                self.manager.save_final(final)
            try:
                report.update(self.task.on_train_end(self.out_dir, completed, metrics))
            except TrainEndError as exc:
                report.update(exc.report)
                failure = exc
            if completed and self.task.schema.report_file:
                write_run_json(self.out_dir / self.task.schema.report_file, report)
            if failure is not None:
                raise failure

        D.on_main(finish, self.dist, "finishing the run")
        return report

    def _tick(self, progress: Progress) -> None:
        now = time.time()
        progress.elapsed += now - self._last_tick
        self._last_tick = now

    def _stop_reason(self, progress: Progress) -> Optional[str]:
        signalled = D.any_rank(self._stop_signal is not None, self.dist, self.device)
        if signalled:
            if self._stop_signal is None:  # another rank got it
                self._stop_signal = signal.SIGTERM
            return "signal"
        if self.config.max_steps is not None and progress.global_step >= self.config.max_steps:
            return "max_steps"
        return None

    def _last_metrics(self, progress: Progress) -> dict[str, float]:
        if not progress.epoch_log:
            return {}
        return {k: v for k, v in progress.epoch_log[-1].items() if isinstance(v, float) and k not in ("lr", "time")}

    @torch.no_grad()
    def _validate(self, epoch: int) -> dict[str, float]:
        """Sample-weighted means of the task's validation metrics over all ranks (of the EMA
        weights when the run keeps an EMA)."""
        if self.val_loader is None:
            return {}
        cfg, task = self.config, self.task
        for m in self.modules.values():
            m.eval()
        generator = torch.Generator(device=self.device)
        generator.manual_seed(loader_seed(cfg.seed, epoch, self.dist.rank) + 1)  # the same in any run
        self.val_loader.generator.manual_seed(loader_seed(cfg.seed, epoch, self.dist.rank) + 2)
        dtype = PRECISIONS[cfg.precision]
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # a metric may be measured on some batches only
        with ema_weights(self.ema, self.modules):
            for batch in self.val_loader:
                batch = task.to_device(batch, self.device)
                ctx = StepContext(epoch, 0, self.device, generator, cfg.precision, self.dist.world_size, self.dist.rank)
                with torch.amp.autocast(device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    values = task.validation_step(self.modules, batch, ctx)
                n = task.batch_size_of(batch)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
                    counts[k] = counts.get(k, 0) + n
        for m in self.modules.values():
            m.train()
        names = sorted(sums)
        flat = torch.tensor([sums[k] for k in names] + [float(counts[k]) for k in names], dtype=torch.float64, device=self.device)
        D.all_reduce_sum(flat, self.dist)
        values = flat.tolist()
        return {k: values[i] / max(values[len(names) + i], 1.0) for i, k in enumerate(names)}

    def _log_epoch(self, entry: dict, epoch_log: list) -> None:
        """Write the whole epoch log atomically; TensorBoard scalars; one log line."""
        task = self.task
        if task.schema.epoch_log_file:
            write_run_json(self.out_dir / task.schema.epoch_log_file, epoch_log)
        if self._tb is not None:
            for k, v in entry.items():
                if isinstance(v, float) and k != "time":
                    self._tb.add_scalar(f"epoch/{k}", v, entry["epoch"])
            for k, v in entry["parts"].items():
                self._tb.add_scalar(f"parts/{k}", v, entry["epoch"])
            self._tb.flush()
        shown = ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float) and k != "time")
        logger.info("epoch %d: %s (%.1fs)", entry["epoch"], shown, entry["time"])

    def _report(self, progress: Progress, completed: bool) -> dict:
        cfg, task = self.config, self.task
        report = {
            "model": task.display_name or task.name,
            "architecture": task.architecture,
            "total_epochs": len(progress.epoch_log),
            "total_steps": progress.global_step,
            "best_loss": progress.best_metric,
            "final_loss": progress.loss_history[-1] if progress.loss_history else None,
            "training_time_hours": progress.elapsed / 3600.0,
            "loss_history": list(progress.loss_history),
            "device": self.device.type,
            "hyperparameters": {
                **task.config_dict(),
                "learning_rate": cfg.lr,
                "batch_size": cfg.batch_size,
                "global_batch_size": cfg.batch_size * self.dist.world_size,
                "epochs": cfg.epochs,
                "weight_decay": cfg.weight_decay,
                "grad_clip": cfg.grad_clip,
                "precision": cfg.precision,
                "scheduler": cfg.scheduler,
                "warmup_steps": cfg.warmup_steps,
                "seed": cfg.seed,
                "world_size": self.dist.world_size,
                "ema_decay": cfg.ema_decay or None,
            },
            "monitor": task.schema.monitor,
            "completed": completed,
        }
        report.update(task.report_extras())
        return report

    # -- signals --------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        self._stop_signal = None
        self._previous_handlers = {}
        if not self.config.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        self._handler_pid = os.getpid()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._handler_pid:
            return  # a forked DataLoader worker (it inherits the handler): the main process decides
        if self._stop_signal is not None:
            if self.dist.distributed:  # raising here could leave the other ranks inside a collective
                logger.warning("received %s again: already stopping after this step (SIGKILL stops at once)", signal.Signals(signum).name)
                return
            raise KeyboardInterrupt  # a second signal in a world of one: stop now
        self._stop_signal = signum
        logger.warning("received %s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)


def train_model(model: str, data_dir: str | os.PathLike, *, preset: str = "tiny", out_dir: str | os.PathLike | None = None,
                task_overrides: Mapping[str, Any] | None = None, **engine_fields: Any) -> dict:
    """Train the registered task ``model`` on a dataset folder with its preset — what `cad3d train`
    and the demo run. ``engine_fields`` (EngineConfig fields; None = the preset's) override the
    preset's engine settings, ``task_overrides`` fields of the task's config (a dataclass);
    ``out_dir`` defaults to ``trained_models/<model>``. Returns the training report."""
    from cad3d.errors import DatasetError
    from cad3d.training.tasks.base import get_task_class

    task_cls = get_task_class(model)
    presets = task_cls.presets()
    if preset not in presets:
        raise TrainingConfigError(f"{model} has no preset {preset!r}; presets: {', '.join(presets)}")
    task = task_cls(dataclasses.replace(presets[preset], **dict(task_overrides or {})))
    fields = dict(task_cls.engine_presets().get(preset, {}))
    fields.update({k: v for k, v in engine_fields.items() if v is not None})
    fields["out_dir"] = str(out_dir if out_dir is not None else Path("trained_models") / model)
    config = EngineConfig(**fields)
    data = Path(data_dir)
    if not data.is_dir():
        raise DatasetError(f"{data}: data folder not found")
    train_set, val_set = task.build_datasets(data, seed=config.seed)
    return Engine(task, train_set, val_set, config).fit()
