"""Two real CPU processes (gloo): the contrastive loss spans the global batch, and `mmrad train` runs on 2 ranks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CONFIGS, PHANTOM_FINDINGS, REPO

BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None, reason="torchrun not installed")
def test_contrastive_loss_is_over_the_global_batch(tmp_path):
    out = tmp_path / "dist.json"
    _run([str(BIN / "torchrun"), "--nproc_per_node", "2", str(REPO / "tests" / "distributed_check.py"), str(out)],
         tmp_path)  # fmt: skip
    seen = json.loads(out.read_text())
    assert seen["num_processes"] == 2 and seen["ranks"] == [0, 1]
    local = seen["local_losses"]
    # the mean of the per-rank losses is the one-process loss over all 8 pairs ...
    assert sum(local) / 2 == pytest.approx(seen["reference_loss"], abs=1e-5)
    # ... which a loss without the gather (4 pairs per rank) would not give
    assert sum(seen["ungathered_losses"]) / 2 != pytest.approx(seen["reference_loss"], abs=1e-3)
    # and after DDP's averaging the gradients equal the one-process gradients of the global loss
    assert len(seen["grad_max_abs_diff"]) == 4
    for name, diff in seen["grad_max_abs_diff"].items():
        assert diff <= 1e-5 and seen["grad_scale"][name] > 1e-3, name


def test_mmrad_train_under_accelerate_launch_uses_two_ranks(phantom_corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [
        str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmrad.cli", "train",
        "--config", str(CONFIGS / "tiny.yaml"), "--corpus", str(phantom_corpus), "--out", str(out),
        "--set", f"model.labels.names={PHANTOM_FINDINGS!r}", "train.max_steps=3", "train.eval_every=3",
        "train.save_every=3", "train.log_with=None", "data.batch_size=4",
    ]  # fmt: skip
    _run(cmd, tmp_path)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 3
    assert (out / "model" / "model.safetensors").is_file()


def test_zero_shot_under_accelerate_launch_writes_the_one_process_csv(tiny_model, tmp_path):
    import numpy as np
    from PIL import Image

    from mmrad.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "3b.png").write_bytes(b"not a png")  # 6 rows, 3 per rank, one unreadable
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    args = ["zero-shot", str(model_dir), str(folder), "--queries", "edema", "pneumothorax", "--batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "one.csv")]) == 0
    cmd = [
        str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmrad.cli", *args,
        "--out", str(tmp_path / "two.csv"), "--cache-images", str(tmp_path / "cache"),
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stdout and result.stdout.count("wrote") == 1  # two ranks; rank 0 writes
    one, two = (tmp_path / "one.csv").read_text(), (tmp_path / "two.csv").read_text()
    assert two == one and len(one.splitlines()) == 7
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 5  # both ranks' shares were scored


def test_ingest_under_accelerate_launch_builds_the_one_process_corpus(tmp_path):
    import datasets

    from mmrad.cli import main
    from mmrad.phantom.corpus import make_phantom_corpus

    make_phantom_corpus(tmp_path / "source", n=140, image_size=48, seed=0)  # 3 shards of 64 rows
    manifest = str(tmp_path / "source" / "manifest.csv")
    assert main(["ingest", manifest, "--out", str(tmp_path / "one"), "--image-size", "32", "--no-progress"]) == 0
    cmd = [
        str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmrad.cli", "ingest", manifest,
        "--out", str(tmp_path / "two"), "--image-size", "32", "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ingested 140 of 140 rows") == 1  # the main process builds and prints
    # both processes decoded shards: 0 and 2 on the first, 1 on the second
    assert (
        "process 0 of 2: 2 shard(s) decoded" in result.stderr and "process 1 of 2: 1 shard(s) decoded" in result.stderr
    )
    one, two = datasets.load_from_disk(str(tmp_path / "one")), datasets.load_from_disk(str(tmp_path / "two"))
    assert {k: len(v) for k, v in one.items()} == {k: len(v) for k, v in two.items()}
    for name in one:
        a, b = one[name].with_format("numpy"), two[name].with_format("numpy")
        for column in ("patient_key", "report", "manifest_row"):
            assert list(a[column]) == list(b[column]), (name, column)
        assert all((x == y).all() for x, y in zip(a["image"], b["image"], strict=True))
        assert np.array_equal(np.asarray(a["labels"]), np.asarray(b["labels"]), equal_nan=True)
