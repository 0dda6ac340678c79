"""The Accelerate training loop: ``train(cfg, out_dir) -> Path`` of the exported model folder.

Order (after accelerate's ``examples/complete_nlp_example.py``): seed -> Accelerator -> model (+ LoRA) -> data
loaders -> optimiser and schedule -> ``prepare``; each step runs under ``accelerator.accumulate``; evaluation on the
validation split every ``eval_every`` optimiser steps keeps the best model (validation macro AUROC, or the
contrastive loss when no finding has labels); ``save_state`` checkpoints every ``save_every`` steps are written
atomically (:mod:`mmrad.training.checkpoints`) and ``resume=True`` continues from the latest complete one.

Output folder::

    out/model/                 best model (save_pretrained; LoRA merged)
    out/checkpoints/step_*/    the last ``keep_last`` training states
    out/logs/                  TensorBoard events (when train.log_with is "tensorboard")
    out/train_summary.json     steps, best metric, history of evaluations
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed

from mmrad.config.schema import ExperimentConfig
from mmrad.errors import MMRadError, ensure_writable_dir
from mmrad.evaluation.predict import predict, prediction_metrics, write_json_atomic
from mmrad.training.checkpoints import (
    latest_checkpoint,
    read_trainer_state,
    remove_partial_checkpoints,
    save_checkpoint,
)
from mmrad.training.data import build_dataloaders, losses_read_reports
from mmrad.training.schedule import param_groups, warmup_cosine

logger = get_logger(__name__)


def resolve_mixed_precision(value: str) -> str:
    """``auto`` = bf16 on a CUDA GPU that supports it, else fp32 (bf16 autocast is ~7x slower on CPUs without it)."""
    if value != "auto":
        return value
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def build_model(cfg: ExperimentConfig):
    """The model to train: ``train.init_from`` (a saved model), the pretrained towers, or random towers."""
    from mmrad.models.lora import apply_lora
    from mmrad.models.modeling import MMRadModel
    from mmrad.models.outputs import resolve_labels

    if cfg.train.init_from:
        model = MMRadModel.from_pretrained(cfg.train.init_from)
        if model.label_names != resolve_labels(cfg.model.labels)[0]:
            raise MMRadError(
                f"train.init_from {cfg.train.init_from}: its findings {model.label_names} differ from the config's"
            )
        model.config.loss = cfg.model.loss  # the stage's loss weights; the architecture comes from the folder
    elif _names_pretrained_weights(cfg.model):
        model = MMRadModel.from_towers(cfg.model)
    else:
        model = MMRadModel(cfg.model)
    if cfg.train.freeze_vision:
        model.vision.requires_grad_(False)
    if cfg.train.freeze_text:
        model.text.requires_grad_(False)
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora)
    if cfg.train.gradient_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.train.recompute_activations:
        model.set_activation_recompute(True)
    return model


def _names_pretrained_weights(model_cfg) -> bool:
    """The config asks for pretrained towers: an open_clip tag or file, an hf-hub:/local-dir: model, or a text
    encoder named by id or folder without a config dict to build it from."""
    vision, text = model_cfg.vision, model_cfg.text
    return bool(
        vision.pretrained
        or str(vision.model_name or "").startswith(("hf-hub:", "local-dir:"))
        or (text.source == "hf" and text.name_or_path and not text.hf_config)
    )


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
        out_dir: output folder (model, checkpoints, logs, summary).
        resume: continue from the latest complete checkpoint in ``out_dir/checkpoints``.
        dataloaders: ``fn(cfg, model) -> TrainData`` replacing the corpus loaders (tests).
    """
    out = Path(out_dir)
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
    train_loader, eval_loader, sampler, text_cache = data.train_loader, data.eval_loader, data.sampler, data.text_cache
    if cfg.train.epochs is not None:
        cfg = _with_epochs(cfg, len(train_loader), accelerator.num_processes)
    reads_reports = losses_read_reports(model.config.loss)  # the loaders may have turned them off (no reports)
    optimizer = torch.optim.AdamW(
        param_groups(
            model.named_parameters(),
            lr=cfg.train.lr,
            tower_lr=cfg.train.tower_lr,
            weight_decay=cfg.train.weight_decay,
            is_tower=_is_tower,
        )
    )
    # the schedule counts optimiser steps, so it is stepped by hand (a prepared scheduler steps once per process)
    scheduler = warmup_cosine(optimizer, cfg.train.warmup_steps, cfg.train.max_steps)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    accelerator.register_for_checkpointing(scheduler)

    ckpt_root = out / "checkpoints"
    state = {"step": 0, "best": None, "best_metric": None, "bad_evals": 0, "history": []}
    if resume:
        if accelerator.is_main_process:
            remove_partial_checkpoints(ckpt_root)
        accelerator.wait_for_everyone()
        latest = latest_checkpoint(ckpt_root)
        if latest is None:
            logger.warning("no complete checkpoint in %s to resume from: starting at step 0", ckpt_root)
        else:
            accelerator.load_state(str(latest))
            state.update(read_trainer_state(latest))
            logger.info("resumed from %s (step %d)", latest.name, state["step"], main_process_only=True)

    if cfg.train.log_with:
        accelerator.init_trackers("mmrad", config=_hparams(cfg))
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise MMRadError("the training loader yields no batch (fewer rows than one batch?)")
    names = accelerator.unwrap_model(model).label_names
    images_per_step = cfg.data.batch_size * cfg.train.gradient_accumulation_steps * accelerator.num_processes
    export_dir = out / "model"

    def evaluate_now(step: int) -> bool:
        """Evaluate, log, export when best; return True when early stopping says stop."""
        if eval_loader is None:
            return False
        pred = predict(model, eval_loader, accelerator)
        metrics = {**prediction_metrics(pred, names), "losses": pred.losses}
        key, score = _selection_score(metrics)
        accelerator.log(_flat("val/", metrics), step=step)
        improved = state["best"] is None or score > state["best"]
        entry = {"step": step, key: score, "macro_auroc": metrics["classification"]["macro_auroc"]}
        state["history"].append(entry)
        if improved:
            state.update(best=score, best_metric=key, best_step=step, bad_evals=0)
            _export(accelerator, model, export_dir)
        else:
            state["bad_evals"] += 1
        logger.info("step %d: %s = %.4f%s", step, key, score, " (best)" if improved else "", main_process_only=True)
        return cfg.train.patience > 0 and state["bad_evals"] >= cfg.train.patience

    from tqdm.auto import tqdm

    progress = tqdm(
        total=cfg.train.max_steps, initial=state["step"], desc="train", disable=not accelerator.is_main_process
    )
    model.train()
    stop = state["step"] >= cfg.train.max_steps
    start_time, aside, first_step = time.perf_counter(), 0.0, state["step"]
    try:
        while not stop:
            epoch, skip = divmod(state["step"], steps_per_epoch)
            sampler.set_epoch(epoch)
            # accelerate's loader re-sets its sampler's epoch from its own counter at each iteration (and the loader
            # that skips a resumed epoch's first batches copies that counter): a resumed run must set it too
            train_loader.set_epoch(epoch)
            loader = train_loader
            if skip:
                loader = accelerator.skip_first_batches(train_loader, skip * cfg.train.gradient_accumulation_steps)
            for batch in loader:
                with accelerator.accumulate(model):
                    reports = {}
                    if text_cache is not None:
                        reports = {"text_features": text_cache.take(batch["row_index"], accelerator.device)}
                    elif reads_reports:
                        reports = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
                    if reports:
                        reports["report_mask"] = batch["has_report"]
                    output = model(pixel_values=batch["pixel_values"], labels=batch["labels"], **reports,
                                   masks=batch.get("masks"), mask_valid=batch.get("mask_valid"))  # fmt: skip
                    accelerator.backward(output.loss)
                    if accelerator.sync_gradients and cfg.train.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state["step"] += 1
                step = state["step"]
                logs = {"train/loss": float(output.loss.detach()), "train/lr": scheduler.get_last_lr()[0]}
                logs.update({f"train/{k}": float(v.detach()) for k, v in output.loss_terms.items()})
                accelerator.log(logs, step=step)
                state.setdefault("losses", []).append(round(logs["train/loss"], 6))
                progress.update(1)
                progress.set_postfix(loss=f"{logs['train/loss']:.4f}")
                paused = time.perf_counter()  # evaluation and checkpoints are not training time
                if step % cfg.train.eval_every == 0 or step == cfg.train.max_steps:
                    stop = evaluate_now(step)
                if step % cfg.train.save_every == 0 or step == cfg.train.max_steps or stop:
                    save_checkpoint(accelerator, ckpt_root, step, _jsonable(state), cfg.train.keep_last)
                aside += time.perf_counter() - paused
                if stop or step >= cfg.train.max_steps:
                    stop = True
                    break
    finally:
        progress.close()  # on errors too: the error message then starts a line of its own

    if eval_loader is None or not export_dir.is_dir():
        _export(accelerator, model, export_dir)  # no validation split: the final model is the result
    train_seconds = time.perf_counter() - start_time - aside
    summary = {
        "steps": state["step"],
        "best_step": state.get("best_step"),
        "best_metric": state.get("best_metric"),
        "best": state.get("best"),
        "history": state["history"],
        "seconds": round(time.perf_counter() - start_time, 1),
        # training steps only (data loading included, evaluation and checkpoints not), over all processes
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round((state["step"] - first_step) * images_per_step / max(train_seconds, 1e-9), 2),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "train_losses": state.get("losses", []),
    }
    if accelerator.is_main_process:
        write_json_atomic(out / "train_summary.json", _jsonable(summary))
    accelerator.end_training()
    return export_dir


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


def _is_tower(name: str) -> bool:
    from mmrad.models.pretrained import is_tower_parameter

    return is_tower_parameter(name)


def _export(accelerator, model, export_dir: Path) -> None:
    """Save the unwrapped model (LoRA merged into a copy) with save_pretrained, on the main process."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        import copy

        from mmrad.models.lora import merge_lora

        plain = accelerator.unwrap_model(model)
        if getattr(plain, "lora_settings", None) is not None:
            plain = merge_lora(copy.deepcopy(plain))
        plain.save_pretrained(export_dir)
    accelerator.wait_for_everyone()


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
