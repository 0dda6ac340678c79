"""Errors users meet: a full disk, an output folder that cannot be written, a config value of the wrong type and a
model folder from a newer mmrad, through ``mmrad ingest``, ``train``, ``evaluate`` and ``push --dry-run``. Each must
end with exit code 1 and one line on stderr naming the file or key and the reason (no traceback), and leave no
half-written output: the output is either absent or the previous complete version, and no temporary file is left.

A full disk is simulated: writes under the output folder fail with ENOSPC (Python file writes, and the safetensors
writers, which bypass them). An unwritable folder is ``chmod 0o500``; as root, where that stops nothing, the same
simulation refuses writes with EACCES. A regular file where a parent folder should be is real in both cases."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from mmrad.cli import main
from tests.conftest import CONFIGS, PHANTOM_FINDINGS

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN_SETTINGS = [
    f"model.labels.names={PHANTOM_FINDINGS!r}", "data.batch_size=8", "train.max_steps=2", "train.eval_every=2",
    "train.save_every=2", "train.warmup_steps=1", "train.log_with=None",
]  # fmt: skip


class FakeDisk:
    """Writes under ``root`` fail with ``code``: ENOSPC after ``free`` bytes (a full disk; the file is created and
    partly written first, like a real one), EACCES on creating anything (a folder without write permission)."""

    def __init__(self, monkeypatch, root: Path, code: int, free: int = 0):
        self.root, self.code, self.free = os.path.abspath(root), code, free
        real_open, real_mkdir, real_replace = builtins.open, os.mkdir, os.replace

        def fake_open(file, mode="r", *args, **kwargs):
            writes = any(c in mode for c in "wax+")
            if writes and isinstance(file, str | os.PathLike) and self.inside(file):
                if self.code == errno.EACCES:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
                return _FullFile(real_open(file, mode, *args, **kwargs), self)
            return real_open(file, mode, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if self.code == errno.EACCES and self.inside(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_mkdir(path, *args, **kwargs)

        def fake_replace(src, dst, *args, **kwargs):
            if self.code == errno.EACCES and (self.inside(src) or self.inside(dst)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src), None, str(dst))
            return real_replace(src, dst, *args, **kwargs)

        def fake_save_file(tensors, filename, metadata=None):  # safetensors writes from Rust: write its bytes here
            from safetensors.torch import save

            with fake_open(filename, "wb") as f:
                f.write(save(tensors, metadata=metadata))

        for target in (builtins, io):
            monkeypatch.setattr(target, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
        monkeypatch.setattr(os, "replace", fake_replace)
        monkeypatch.setattr(os, "rename", fake_replace)
        monkeypatch.setattr("mmrad.models.serialization.save_file", fake_save_file)
        monkeypatch.setattr("accelerate.utils.other.safe_save_file", fake_save_file)

    def inside(self, path) -> bool:
        path = os.path.abspath(os.fspath(path))
        return path.startswith(self.root + os.sep)


class _FullFile:
    """A file whose writes stop with ENOSPC (no file name, as the kernel reports it) when the disk's bytes run out."""

    def __init__(self, f, disk: FakeDisk):
        self._f, self._disk = f, disk

    def write(self, data):
        if len(data) > self._disk.free:
            self._f.write(data[: self._disk.free])
            self._disk.free = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.free -= len(data)
        return self._f.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder)``: from now on, writing under ``folder`` fails with ENOSPC."""
    return lambda root, free=0: FakeDisk(monkeypatch, root, errno.ENOSPC, free)


@pytest.fixture
def unwritable(monkeypatch):
    """``unwritable(folder)``: ``folder`` (created) accepts no new file or folder."""
    locked = []

    def lock(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # root writes through any permission bits
            FakeDisk(monkeypatch, root, errno.EACCES)
        else:
            root.chmod(0o500)
            locked.append(root)
        return root

    yield lock
    for root in locked:
        root.chmod(0o700)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the hash of its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders of an interrupted write anywhere under ``folder``."""
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name or p.name == "staging"]


def run_fails(capsys, argv: list[str], *expected: str) -> str:
    """Run ``mmrad -q ARGV``: exit code 1 and exactly one error line, at the start of a line, holding ``expected``."""
    capsys.readouterr()
    assert main(["-q", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "mmrad: error:" in line]
    assert len(errors) == 1, err
    line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # a progress bar may clear its line with "\r"
    assert line.startswith("mmrad: error: "), f"the error does not start its own line: {line!r}"
    for text in expected:
        assert text in line, (text, line)
    return line


# ----------------------------------------------------------------------------------------------------------------
# inputs shared by the tests: a small source, its corpus, a trained model
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from mmrad.phantom.corpus import make_phantom_corpus

    root = tmp_path_factory.mktemp("source")
    make_phantom_corpus(root, n=16, image_size=32, seed=0)
    return root / "manifest.csv"


def ingest_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["ingest", str(manifest), "--out", str(out), "--image-size", "32", "--labels", "manifest",
            "--no-progress", *extra]  # fmt: skip


def train_args(corpus: Path, out: Path) -> list[str]:
    return ["train", "--config", str(CONFIGS / "tiny.yaml"), "--corpus", str(corpus), "--out", str(out),
            "--set", *TRAIN_SETTINGS]  # fmt: skip


@pytest.fixture(scope="module")
def trained(phantom_corpus, tmp_path_factory) -> Path:
    """A complete training run (2 steps) on the phantom corpus: its output folder."""
    import torch

    out = tmp_path_factory.mktemp("trained") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["-q", *train_args(phantom_corpus, out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def evaluate_args(model: Path, corpus: Path, out: Path) -> list[str]:
    return ["evaluate", str(model), str(corpus), "--out", str(out), "--bootstrap", "0", "--batch-size", "16"]


# ----------------------------------------------------------------------------------------------------------------
# a full disk
# ----------------------------------------------------------------------------------------------------------------

FULL = "no space left on device"


def test_ingest_disk_full_new_corpus(source, tmp_path, capsys, full_disk):
    out = tmp_path / "corpus"
    full_disk(tmp_path)
    run_fails(capsys, ingest_args(source, out), f"cannot write {out}", FULL)
    assert not (out / "dataset_dict.json").exists() and not (out / "mmrad_corpus.json").exists()
    assert not (out / "rejects.csv").exists() and leftovers(tmp_path) == []


def test_ingest_disk_full_keeps_the_previous_corpus(source, tmp_path, capsys, full_disk):
    out = tmp_path / "corpus"
    assert main(["-q", *ingest_args(source, out)]) == 0
    before = snapshot(out)
    full_disk(tmp_path, free=2000)  # some bytes go through, then the disk is full
    run_fails(capsys, ingest_args(source, out, "--force"), f"cannot write {out}", FULL)
    assert snapshot(out) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("first_write", ["model", "checkpoints"])
def test_train_disk_full_keeps_the_previous_run(first_write, trained, phantom_corpus, tmp_path, capsys, full_disk):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = snapshot(out)
    full_disk(out)
    argv = train_args(phantom_corpus, out)
    if first_write == "checkpoints":  # a checkpoint at step 1, before the first evaluation exports the model
        argv += ["train.save_every=1"]
    run_fails(capsys, argv, f"cannot write {out / first_write}", FULL)
    assert snapshot(out) == before and leftovers(out) == []

    from mmrad.models import MMRadModel

    MMRadModel.from_pretrained(out / "model")  # still the complete previous model


def test_evaluate_disk_full_keeps_the_previous_metrics(trained, phantom_corpus, tmp_path, capsys, full_disk):
    out = tmp_path / "eval" / "metrics.json"
    out.parent.mkdir()
    out.write_text('{"previous": true}')
    full_disk(out.parent)
    run_fails(capsys, evaluate_args(trained / "model", phantom_corpus, out), str(out.parent), FULL)
    assert json.loads(out.read_text()) == {"previous": True}
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]


def test_push_dry_run_disk_full(trained, tmp_path, capsys, full_disk):
    out = tmp_path / "upload"
    full_disk(tmp_path)
    run_fails(capsys, ["push", str(trained / "model"), "me/model", "--dry-run", str(out)], f"cannot write {out}", FULL)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# an output folder that cannot be written
# ----------------------------------------------------------------------------------------------------------------

DENIED = "permission denied"


def test_ingest_unwritable_folder(source, tmp_path, capsys, unwritable):
    out = unwritable(tmp_path / "locked")
    run_fails(capsys, ingest_args(source, out), str(out), DENIED)
    assert snapshot(out) == {}


def test_train_unwritable_folder_fails_before_training(phantom_corpus, tmp_path, capsys, unwritable, monkeypatch):
    import mmrad.training.loop as loop

    def no_model(cfg):
        raise AssertionError("the model was built before the output folder was checked")

    monkeypatch.setattr(loop, "build_model", no_model)
    out = unwritable(tmp_path / "locked")
    run_fails(capsys, train_args(phantom_corpus, out), f"cannot write {out}", DENIED)
    assert snapshot(out) == {}


def test_evaluate_unwritable_folder(trained, phantom_corpus, tmp_path, capsys, unwritable):
    out = unwritable(tmp_path / "locked") / "metrics.json"
    run_fails(capsys, evaluate_args(trained / "model", phantom_corpus, out), f"cannot write {out.parent}", DENIED)
    assert snapshot(out.parent) == {}


def test_push_dry_run_unwritable_folder(trained, tmp_path, capsys, unwritable):
    locked = unwritable(tmp_path / "locked")
    out = locked / "upload"
    run_fails(
        capsys, ["push", str(trained / "model"), "me/model", "--dry-run", str(out)], f"cannot write {out}", DENIED
    )
    assert snapshot(locked) == {}


@pytest.mark.parametrize("command", ["ingest", "train", "evaluate", "push"])
def test_a_file_where_the_output_folder_should_be(command, source, trained, phantom_corpus, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / "out"
    argv = {
        "ingest": ingest_args(source, out),
        "train": train_args(phantom_corpus, out),
        "evaluate": evaluate_args(trained / "model", phantom_corpus, out / "metrics.json"),
        "push": ["push", str(trained / "model"), "me/model", "--dry-run", str(out)],
    }[command]
    run_fails(capsys, argv, str(blocker), "file")  # 'a part of the path is a file' or 'a file ... is in the way'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------------------------------------------
# a config value of the wrong type
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
        ("data.batch_size=2.5", "data.batch_size: expected an integer, got 2.5"),
        ("train.max_steps=True", "train.max_steps: expected an integer, got True"),
    ],
)
def test_train_override_of_the_wrong_type(override, expected, tmp_path, capsys):
    out = tmp_path / "run"
    config = CONFIGS / "tiny.yaml"
    run_fails(capsys, ["train", "--config", str(config), "--out", str(out), "--set", override], expected)
    assert not out.exists()


def test_train_yaml_value_of_the_wrong_type(tmp_path, capsys):
    text = (CONFIGS / "tiny.yaml").read_text()
    assert "  max_steps: 20\n" in text
    config = tmp_path / "bad.yaml"
    config.write_text(text.replace("  max_steps: 20\n", "  max_steps: twenty\n"))
    out = tmp_path / "run"
    run_fails(capsys, ["train", "--config", str(config), "--out", str(out)],
              str(config), "train.max_steps: expected an integer, got 'twenty'")  # fmt: skip
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# a model folder from a newer mmrad
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def newer_model(trained, tmp_path) -> Path:
    import shutil

    folder = tmp_path / "newer"
    shutil.copytree(trained / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config["mmrad_version"] = "99.0.0"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("command", ["evaluate", "push"])
def test_model_folder_from_a_newer_mmrad(command, newer_model, phantom_corpus, tmp_path, capsys):
    from mmrad import __version__

    out = tmp_path / "out"
    argv = {
        "evaluate": evaluate_args(newer_model, phantom_corpus, out / "metrics.json"),
        "push": ["push", str(newer_model), "me/model", "--dry-run", str(out)],
    }[command]
    run_fails(capsys, argv, str(newer_model / "config.json"), "99.0.0", __version__, "upgrade mmrad")
    assert not out.exists()
