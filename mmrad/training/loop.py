"""The Accelerate training loop: ``train(cfg, out_dir) -> Path`` of the exported model folder.

A run is a sequence of named stages, after accelerate's ``examples/complete_nlp_example.py``:

1. :func:`setup` — seed -> Accelerator -> model (+ LoRA) -> data loaders -> optimiser and schedule -> ``prepare``;
2. :func:`resume_latest` — with ``resume=True``, the latest complete checkpoint and its :class:`TrainerState`;
3. :func:`run_epochs` — each step under ``accelerator.accumulate`` (:func:`train_step`); every ``eval_every``
   optimiser steps :func:`evaluate_and_keep_best` scores the validation split and exports the best model (validation
   macro AUROC, or the contrastive loss when no finding has labels); every ``save_every`` steps an atomic
   ``save_state`` checkpoint (:mod:`mmrad.training.checkpoints`);
4. :func:`finish` — the final export when nothing was validated, ``train_summary.json``, the trackers closed.

Output folder::

    out/model/                 best model (save_pretrained; LoRA merged), its card and data_summary.json
    out/adapter/               with LoRA: the same model's adapters unmerged (mmrad push --adapter-only)
    out/checkpoints/step_*/    the last ``keep_last`` training states
    out/logs/                  TensorBoard events (when train.log_with is "tensorboard")
    out/train_summary.json     steps, best metric, history of evaluations, throughput
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed

from mmrad.config.schema import ExperimentConfig
from mmrad.errors import MMRadError
from mmrad.evaluation.predict import predict, prediction_metrics
from mmrad.files import ensure_writable_dir, write_json_atomic
from mmrad.processes import resolve_mixed_precision
from mmrad.training.averaging import WeightAverage
from mmrad.training.checkpoints import (
    latest_checkpoint,
    read_trainer_state,
    remove_partial_checkpoints,
    save_checkpoint,
)
from mmrad.training.data import TrainData, build_dataloaders, losses_read_reports
from mmrad.training.export import export_model
from mmrad.training.model import build_model, is_tower
from mmrad.training.schedule import param_groups, warmup_cosine

logger = get_logger(__name__)


@dataclass
class TrainerState:
    """Where training is and what it found; saved with every checkpoint (``trainer_state.json``)."""

    step: int = 0  # optimiser steps done
    best: float | None = None  # the best validation score so far
    best_metric: str | None = None  # what ``best`` measures ("val/macro_auroc" or "-val/contrastive")
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    losses: list[float] = field(default_factory=list)  # the training loss of every step

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Trainer:
    """What the stages of a run share: the config, the prepared objects and the state."""

    cfg: ExperimentConfig
    out: Path
    accelerator: Accelerator
    model: torch.nn.Module  # prepared (wrapped under DDP)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: TrainData  # its loaders prepared
    state: TrainerState = field(default_factory=TrainerState)
    train_seconds: float = 0.0  # in training steps, data loading included, evaluation and checkpoints not
    steps_this_run: int = 0
    average: WeightAverage | None = None  # train.ema_decay: the averaged weights validation and exports use

    def averaged(self):
        """A context in which the unwrapped model holds the weights to validate and export (the average, if any)."""
        plain = self.accelerator.unwrap_model(self.model)
        return self.average.applied(plain) if self.average is not None else contextlib.nullcontext(plain)

    @property
    def export_dir(self) -> Path:
        return self.out / "model"

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.train_loader) / self.cfg.train.gradient_accumulation_steps)


def _selection_score(metrics: dict) -> tuple[str, float]:
    """What "best" means: validation macro AUROC, else minus the validation contrastive loss."""
    auroc = metrics.get("classification", {}).get("macro_auroc", math.nan)
    if not math.isnan(auroc):
        return "val/macro_auroc", auroc
    loss = metrics.get("losses", {}).get("contrastive", math.nan)
    return "-val/contrastive", -loss


def _flat(prefix: str, metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and key != "per_class":
            out.update(_flat(f"{prefix}{key}/", value))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def train(cfg: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, dataloaders=None) -> Path:
    """Train ``cfg`` into ``out_dir`` and return the exported model folder.

    Args:
        cfg: the experiment (``data.corpus`` must name an ingested corpus unless ``dataloaders`` is given).
        out_dir: output folder (model, adapter, checkpoints, logs, summary).
        resume: continue from the latest complete checkpoint in ``out_dir/checkpoints``.
        dataloaders: ``fn(cfg, model) -> TrainData`` replacing the corpus loaders (tests).
    """
    trainer = setup(cfg, Path(out_dir), dataloaders)
    if resume:
        resume_latest(trainer)
    run_epochs(trainer)
    finish(trainer)
    return trainer.export_dir


def setup(cfg: ExperimentConfig, out: Path, dataloaders=None) -> Trainer:
    """Seed, Accelerator, model, data loaders, optimiser and schedule, all prepared."""
    ensure_writable_dir(out)  # an unwritable output folder fails now, not after the first hours of training
    set_seed(cfg.train.seed)
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision),
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        log_with=cfg.train.log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    model = build_model(cfg)
    data = (dataloaders or build_dataloaders)(cfg, model)
    if cfg.train.epochs is not None:
        cfg = _with_epochs(cfg, len(data.train_loader), accelerator.num_processes)
    groups = param_groups(model.named_parameters(), lr=cfg.train.lr, tower_lr=cfg.train.tower_lr,
                          weight_decay=cfg.train.weight_decay, is_tower=is_tower)  # fmt: skip
    optimizer = torch.optim.AdamW(groups)
    # the schedule counts optimiser steps, so it is stepped by hand (a prepared scheduler steps once per process)
    scheduler = warmup_cosine(optimizer, cfg.train.warmup_steps, cfg.train.max_steps)
    model, optimizer, data.train_loader = accelerator.prepare(model, optimizer, data.train_loader)
    if data.eval_loader is not None:
        data.eval_loader = accelerator.prepare(data.eval_loader)
    accelerator.register_for_checkpointing(scheduler)
    average = None
    if cfg.train.ema_decay > 0:
        average = WeightAverage(accelerator.unwrap_model(model), cfg.train.ema_decay)
        accelerator.register_for_checkpointing(average)
    if cfg.train.log_with:
        accelerator.init_trackers("mmrad", config=_hparams(cfg))
    trainer = Trainer(cfg, out, accelerator, model, optimizer, scheduler, data, average=average)
    if trainer.steps_per_epoch == 0:
        raise MMRadError("the training loader yields no batch (fewer rows than one batch?)")
    return trainer


def resume_latest(trainer: Trainer) -> None:
    """Load the latest complete checkpoint's states (model, optimiser, schedule, RNG) and :class:`TrainerState`."""
    accelerator, root = trainer.accelerator, trainer.out / "checkpoints"
    if accelerator.is_main_process:
        remove_partial_checkpoints(root)
    accelerator.wait_for_everyone()
    latest = latest_checkpoint(root)
    if latest is None:
        logger.warning("no complete checkpoint in %s to resume from: starting at step 0", root)
        return
    accelerator.load_state(str(latest))
    trainer.state = TrainerState.from_dict(read_trainer_state(latest))
    logger.info("resumed from %s (step %d)", latest.name, trainer.state.step, main_process_only=True)


def run_epochs(trainer: Trainer) -> None:
    """Train until ``max_steps`` (or early stopping), a resumed run from where its checkpoint left off."""
    from tqdm.auto import tqdm

    cfg, accelerator, state = trainer.cfg, trainer.accelerator, trainer.state
    progress = tqdm(total=cfg.train.max_steps, initial=state.step, desc="train",
                    disable=not accelerator.is_main_process)  # fmt: skip
    trainer.model.train()
    stop = state.step >= cfg.train.max_steps
    start, aside, first = time.perf_counter(), 0.0, state.step
    try:
        while not stop:
            epoch, skip = divmod(state.step, trainer.steps_per_epoch)
            trainer.data.sampler.set_epoch(epoch)
            # accelerate's loader re-sets its sampler's epoch from its own counter at each iteration (and the loader
            # that skips a resumed epoch's first batches copies that counter): a resumed run must set it too
            loader = trainer.data.train_loader
            loader.set_epoch(epoch)
            if skip:
                loader = accelerator.skip_first_batches(loader, skip * cfg.train.gradient_accumulation_steps)
            for batch in loader:
                output = train_step(trainer, batch)
                if not accelerator.sync_gradients:
                    continue
                log_step(trainer, output, progress)
                paused = time.perf_counter()  # evaluation and checkpoints are not training time
                stop = after_step(trainer)
                aside += time.perf_counter() - paused
                if stop:
                    break
    finally:
        progress.close()  # on errors too: the error message then starts a line of its own
    trainer.train_seconds = time.perf_counter() - start - aside
    trainer.steps_this_run = state.step - first


def train_step(trainer: Trainer, batch: dict):
    """One forward/backward pass (an optimiser step when gradients sync) under ``accelerator.accumulate``."""
    cfg, accelerator, model = trainer.cfg, trainer.accelerator, trainer.model
    with accelerator.accumulate(model):
        output = model(pixel_values=batch["pixel_values"], labels=batch["labels"], masks=batch.get("masks"),
                       mask_valid=batch.get("mask_valid"), **_report_inputs(trainer, batch))  # fmt: skip
        accelerator.backward(output.loss)
        if accelerator.sync_gradients and cfg.train.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    if trainer.average is not None and accelerator.sync_gradients:
        trainer.average.update(accelerator.unwrap_model(model))
    return output


def _report_inputs(trainer: Trainer, batch: dict) -> dict:
    """What the report losses read: cached text features (frozen text tower) or the tokens, with the row mask."""
    plain = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.data.text_cache is not None:
        inputs = {"text_features": trainer.data.text_cache.take(batch["row_index"], trainer.accelerator.device)}
    elif losses_read_reports(plain.config.loss):  # the loaders may have turned them off (no reports)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    else:
        return {}
    return {**inputs, "report_mask": batch["has_report"]}


def log_step(trainer: Trainer, output, progress) -> None:
    """Count the optimiser step, step the schedule, log the loss terms."""
    trainer.scheduler.step()
    trainer.state.step += 1
    logs = {"train/loss": float(output.loss.detach()), "train/lr": trainer.scheduler.get_last_lr()[0]}
    logs.update({f"train/{k}": float(v.detach()) for k, v in output.loss_terms.items()})
    trainer.accelerator.log(logs, step=trainer.state.step)
    trainer.state.losses.append(round(logs["train/loss"], 6))
    progress.update(1)
    progress.set_postfix(loss=f"{logs['train/loss']:.4f}")


def after_step(trainer: Trainer) -> bool:
    """Evaluate and checkpoint when due; True when training should stop."""
    step, train_cfg = trainer.state.step, trainer.cfg.train
    last = step >= train_cfg.max_steps
    stop = False
    if step % train_cfg.eval_every == 0 or last:
        stop = evaluate_and_keep_best(trainer)
    if step % train_cfg.save_every == 0 or last or stop:
        save_checkpoint(trainer.accelerator, trainer.out / "checkpoints", step, trainer.state.to_dict(),
                        train_cfg.keep_last)  # fmt: skip
    return stop or last


def evaluate_and_keep_best(trainer: Trainer) -> bool:
    """Score the validation split, log, export when best; True when early stopping says stop."""
    if trainer.data.eval_loader is None:
        return False
    state, accelerator = trainer.state, trainer.accelerator
    names = accelerator.unwrap_model(trainer.model).label_names
    with trainer.averaged():
        pred = predict(trainer.model, trainer.data.eval_loader, accelerator)
    metrics = {**prediction_metrics(pred, names), "losses": pred.losses}
    key, score = _selection_score(metrics)
    accelerator.log(_flat("val/", metrics), step=state.step)
    improved = state.best is None or score > state.best
    state.history.append({"step": state.step, key: score, "macro_auroc": metrics["classification"]["macro_auroc"]})
    if improved:
        state.best, state.best_metric, state.best_step, state.bad_evals = score, key, state.step, 0
        with trainer.averaged():
            export_model(trainer)
    else:
        state.bad_evals += 1
    logger.info("step %d: %s = %.4f%s", state.step, key, score, " (best)" if improved else "", main_process_only=True)
    return trainer.cfg.train.patience > 0 and state.bad_evals >= trainer.cfg.train.patience


def finish(trainer: Trainer) -> None:
    """The final export when nothing was validated, ``train_summary.json`` and the card's training line."""
    state, accelerator = trainer.state, trainer.accelerator
    if trainer.data.eval_loader is None or not trainer.export_dir.is_dir():
        with trainer.averaged():
            export_model(trainer)  # no validation split: the final model is the result
    images = trainer.steps_this_run * trainer.cfg.data.batch_size * trainer.cfg.train.gradient_accumulation_steps
    summary = {
        "steps": state.step,
        "best_step": state.best_step,
        "best_metric": state.best_metric,
        "best": state.best,
        "history": state.history,
        # training steps only (data loading included, evaluation and checkpoints not), over all processes
        "train_seconds": round(trainer.train_seconds, 2),
        "images_per_second": round(images * accelerator.num_processes / max(trainer.train_seconds, 1e-9), 2),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "train_losses": state.losses,
    }
    if accelerator.is_main_process:
        write_json_atomic(trainer.out / "train_summary.json", _jsonable(summary))
        from mmrad.training.export import record_training

        record_training(trainer.export_dir, summary)
    accelerator.end_training()


def _with_epochs(cfg: ExperimentConfig, batches: int, processes: int) -> ExperimentConfig:
    """A copy of ``cfg`` whose ``max_steps`` make ``train.epochs`` passes over ``batches`` loader batches (each
    process sees its share of them)."""
    import copy

    cfg = copy.deepcopy(cfg)
    per_epoch = math.ceil(math.ceil(batches / processes) / cfg.train.gradient_accumulation_steps)
    cfg.train.max_steps = max(1, cfg.train.epochs * per_epoch)
    logger.info("train.epochs=%d: %d optimiser steps (%d per epoch)", cfg.train.epochs, cfg.train.max_steps,
                per_epoch, main_process_only=True)  # fmt: skip
    return cfg


def _hparams(cfg: ExperimentConfig) -> dict:
    """Scalar hyper-parameters for the tracker (no paths: they may name patients or sites)."""
    flat = {}
    for section in ("train", "data", "lora"):
        for key, value in getattr(cfg, section).__dict__.items():
            if isinstance(value, bool | int | float) and key not in ("corpus",):
                flat[f"{section}.{key}"] = value
    flat["model.projection_dim"] = cfg.model.projection_dim
    flat["model.fusion.num_layers"] = cfg.model.fusion.num_layers
    return flat


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
