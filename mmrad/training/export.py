"""What a training run leaves for users: the model folder, the LoRA adapter folder, and the data summary on the card.

:func:`export_model` writes ``out/model`` (LoRA merged into a copy) with ``data_summary.json`` (counts and label
prevalences of the training corpus, never identifiers) so that its card describes the data, and, when the model has
LoRA adapters, ``out/adapter`` (the same weights unmerged, an adapter-only folder that ``mmrad push --adapter-only``
shares). :func:`record_training` adds the run's steps and best score to the summary and rewrites the card.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from mmrad.files import write_json_atomic
from mmrad.models.card import write_card
from mmrad.models.folder import DATA_SUMMARY_NAME, CheckpointError, read_json

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


def export_model(trainer) -> None:
    """Save the unwrapped model to ``out/model`` (and its adapters to ``out/adapter``) on the main process."""
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from mmrad.models.lora import merge_lora

        plain = accelerator.unwrap_model(trainer.model)
        export_dir = trainer.export_dir
        lora = getattr(plain, "lora_settings", None) is not None
        folders = [export_dir] + ([trainer.out / ADAPTER_DIR] if lora else [])
        if trainer.data.summary is not None:
            for folder in folders:  # before saving, so that the card save_pretrained writes describes the data
                folder.mkdir(parents=True, exist_ok=True)
                write_json_atomic(folder / DATA_SUMMARY_NAME, trainer.data.summary)
        (merge_lora(copy.deepcopy(plain)) if lora else plain).save_pretrained(export_dir)
        if lora:
            save_adapters(plain, trainer.out / ADAPTER_DIR)
    accelerator.wait_for_everyone()


def save_adapters(model, folder: Path) -> None:
    """The unmerged LoRA adapters and new modules as an adapter-only folder; skipped (with a log line) when the base
    towers are saved nowhere (random towers, no ``train.init_from``)."""
    try:
        model.save_pretrained(folder, adapter_only=True)
    except CheckpointError as err:
        logger.info("no adapter folder: %s", err)


def record_training(export_dir: Path, summary: dict) -> None:
    """Add the run's training line (steps, processes, best score) to the data summary and rewrite the card."""
    for folder in (export_dir, export_dir.parent / ADAPTER_DIR):
        data = read_json(folder / DATA_SUMMARY_NAME)
        if data is None:
            continue
        keys = ("steps", "num_processes", "best_metric", "best", "best_step")
        data["training"] = {k: summary.get(k) for k in keys}
        write_json_atomic(folder / DATA_SUMMARY_NAME, data)
        write_card(folder)
