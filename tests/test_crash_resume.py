"""Crash and resume: ``mmrad train`` in a subprocess is killed with SIGKILL, ``mmrad train --resume`` finishes the run,
and the losses equal those of an uninterrupted run with the same seed; a kill while a checkpoint is being written
never leaves a checkpoint that --resume would load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmrad.cli import main
from mmrad.training.checkpoints import complete_checkpoints, latest_checkpoint
from tests.conftest import CONFIGS, PHANTOM_FINDINGS, REPO

pytestmark = pytest.mark.usefixtures("single_thread")

DRIVER = Path(__file__).with_name("crash_driver.py")
MAX_STEPS = 10


def _train_args(corpus: Path, out: Path) -> list[str]:
    return [
        "train", "--config", str(CONFIGS / "tiny.yaml"), "--corpus", str(corpus), "--out", str(out),
        "--set", f"model.labels.names={PHANTOM_FINDINGS!r}", "data.batch_size=8", f"train.max_steps={MAX_STEPS}",
        "train.save_every=2", "train.eval_every=5", "train.warmup_steps=1", "train.log_with=None",
    ]  # fmt: skip


def _losses(out: Path) -> list[float]:
    return json.loads((out / "train_summary.json").read_text())["train_losses"]


@pytest.fixture(scope="module")
def reference(phantom_corpus, tmp_path_factory) -> list[float]:
    """The uninterrupted run's losses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("reference") / "run"
        assert main(["--quiet", *_train_args(phantom_corpus, out)]) == 0
    finally:
        torch.set_num_threads(threads)
    losses = _losses(out)
    assert len(losses) == MAX_STEPS
    # the runs below resume in the first epoch and in the middle of the second one
    from mmrad.corpus.format import load_corpus

    steps_per_epoch = len(load_corpus(phantom_corpus)[0]["train"]) // 8
    assert 4 < steps_per_epoch < 8, steps_per_epoch
    return losses


def _run_until_killed(mode: str, step: int, corpus: Path, out: Path, logs: Path) -> None:
    """Start the driver, wait until it reports the chosen point, SIGKILL it."""
    ready = logs / f"{mode}.ready"
    with (logs / f"{mode}.stdout").open("w") as stdout, (logs / f"{mode}.stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), mode, str(step), str(ready), "--", *_train_args(corpus, out)],
            stdout=stdout, stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            alive = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert ready.exists() and alive, (logs / f"{mode}.stderr").read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_after_a_checkpoint_then_resume_gives_the_same_losses(phantom_corpus, reference, tmp_path, capsys):
    """Killed in the second epoch, after checkpoint 8: the resumed run skips that epoch's first batches."""
    out = tmp_path / "run"
    _run_until_killed("after-checkpoint", 8, phantom_corpus, out, tmp_path)
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == ["step_00000006", "step_00000008"]
    assert not (out / "train_summary.json").exists()

    assert main(_train_args(phantom_corpus, out) + ["--resume"]) == 0
    assert "resumed from step_00000008 (step 8)" in capsys.readouterr().err
    losses = _losses(out)
    assert len(losses) == MAX_STEPS
    assert losses == pytest.approx(reference, abs=1e-6)


def test_sigkill_while_writing_a_checkpoint_never_resumes_from_it(phantom_corpus, reference, tmp_path, capsys):
    """Killed while checkpoint 4 is half written: --resume ignores and removes it, goes on from checkpoint 2, and
    crosses into the second epoch with the same batches as the uninterrupted run."""
    out = tmp_path / "run"
    _run_until_killed("mid-write", 4, phantom_corpus, out, tmp_path)
    root = out / "checkpoints"
    torn = root / ".tmp_step_00000004"
    assert torn.is_dir() and (torn / "model.safetensors").is_file()  # half a checkpoint is on disk
    assert latest_checkpoint(root) == root / "step_00000002"  # ... and is not what --resume would load

    assert main(_train_args(phantom_corpus, out) + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "removed 1 incomplete checkpoint folder" in err and "resumed from step_00000002 (step 2)" in err
    assert not torn.exists()
    assert _losses(out) == pytest.approx(reference, abs=1e-6)
    assert [c.name for c in complete_checkpoints(root)] == ["step_00000008", "step_00000010"]


def test_a_kill_while_old_checkpoints_are_deleted_leaves_none_marked_complete(tmp_path, monkeypatch):
    """keep_last deletes old checkpoints; a half-deleted one must never count as complete."""
    import mmrad.training.checkpoints as ckpt

    class OneProcess:
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, output_dir, safe_serialization=True):
            Path(output_dir).mkdir(parents=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"weights")

    root = tmp_path / "checkpoints"
    for step in (2, 4):
        ckpt.save_checkpoint(OneProcess(), root, step, {}, keep_last=2)

    real_rmtree = ckpt.shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        if not Path(path).name.startswith("step_"):
            return real_rmtree(path, ignore_errors=ignore_errors)
        (Path(path) / "model.safetensors").unlink()  # part of the folder is gone when the kill lands
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(OneProcess(), root, 6, {}, keep_last=2)
    assert [c.name for c in complete_checkpoints(root)] == ["step_00000004", "step_00000006"]
