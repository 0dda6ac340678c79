"""Untrusted files: no unsafe deserialisation anywhere in mmrad/, trust_remote_code off unless the user passes it,
and malicious pickle weights — given as a model folder's weights, as tower checkpoints, as a text encoder — refused
with a clear error before their payload can run."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

from mmrad.cli import main
from mmrad.errors import UnsafeFileError
from mmrad.models import MMRadModel
from mmrad.models.folder import CheckpointError
from mmrad.models.pretrained import check_tensor_file
from tests.conftest import CONFIGS, REPO

pytestmark = pytest.mark.usefixtures("single_thread")

PACKAGE = REPO / "mmrad"


# ------------------------------------------------------------------------------------------------ source checks


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                yield node, f"{func.value.id}.{func.attr}"
            elif isinstance(func, ast.Name):
                yield node, func.id


def _keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def _sources():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    for path in files:
        yield path.relative_to(REPO), ast.parse(path.read_text(encoding="utf-8"))


def test_no_unsafe_deserialisation_in_the_package():
    forbidden = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load", "cloudpickle.loads",
                 "dill.load", "dill.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open",
                 "yaml.load", "yaml.unsafe_load", "eval", "exec"}  # fmt: skip
    problems = []
    for path, tree in _sources():
        for node, name in _calls(tree):
            where = f"{path}:{node.lineno}"
            if name in forbidden:
                problems.append(f"{where}: {name}")
            if name == "torch.load":
                value = _keyword(node, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load"):
                value = _keyword(node, "allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
    assert not problems


def test_pickle_is_only_named_for_its_error_class():
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pickle":
                assert node.attr == "UnpicklingError", f"{path}:{node.lineno}: pickle.{node.attr}"


def test_trust_remote_code_is_never_switched_on_by_mmrad():
    from mmrad.config.schema import TextConfig, load_config

    for path, tree in _sources():
        for node, _ in _calls(tree):
            value = _keyword(node, "trust_remote_code")
            assert not (isinstance(value, ast.Constant) and value.value), f"{path}:{node.lineno}"
    assert TextConfig(hf_config={"model_type": "bert"}).trust_remote_code is False
    for config in sorted(CONFIGS.glob("*.yaml")):
        assert load_config(config).model.text.trust_remote_code is False, config


# ------------------------------------------------------------------------------------------------ behaviour


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious(path: Path, marker: Path) -> Path:
    torch.save({"visual.proj": torch.zeros(2), "payload": _Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "the pickle payload ran"


@pytest.fixture
def saved_model(tiny_model, tmp_path) -> Path:
    return tiny_model.save_pretrained(tmp_path / "model")


def test_pickle_weights_in_a_model_folder_are_refused(saved_model, marker, phantom_corpus, capsys):
    (saved_model / "model.safetensors").unlink()
    _malicious(saved_model / "pytorch_model.bin", marker)
    with pytest.raises(CheckpointError, match=r"refusing pytorch_model\.bin: pickle files can run code"):
        MMRadModel.from_pretrained(saved_model)
    assert main(["evaluate", str(saved_model), str(phantom_corpus), "--out", str(saved_model / "m.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmrad: error: ") and "refusing pytorch_model.bin" in err and "\n" not in err


def test_a_pickle_named_like_safetensors_is_refused(saved_model, marker):
    _malicious(saved_model / "model.safetensors", marker)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        MMRadModel.from_pretrained(saved_model)


def test_a_pickle_tower_checkpoint_is_refused_and_a_tensor_one_accepted(tiny_config, tmp_path, marker, capsys):
    evil = _malicious(tmp_path / "open_clip_pytorch_model.bin", marker)
    tiny_config.vision.pretrained = str(evil)
    with pytest.raises(UnsafeFileError, match="refused: not a plain tensor file"):
        MMRadModel.from_towers(tiny_config)
    args = ["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "run"),
            "--set", f"model.vision.pretrained={str(evil)!r}"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmrad: error: ") and "refused: not a plain tensor file" in err and "\n" not in err

    # an open_clip checkpoint saved as plain tensors (zip and legacy torch formats) loads
    import open_clip

    model_cfg = {**tiny_config.vision.model_cfg, "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 16,
                                                               "heads": 2, "layers": 1}}  # fmt: skip
    tiny_config.vision.model_cfg = model_cfg
    clip = open_clip.CLIP(**model_cfg)
    expected = clip.visual.state_dict()["conv1.weight"]
    for legacy in (False, True):
        plain = tmp_path / f"plain_{legacy}.bin"
        torch.save(clip.state_dict(), plain, _use_new_zipfile_serialization=not legacy)
        check_tensor_file(plain)
        tiny_config.vision.pretrained = str(plain)
        model = MMRadModel.from_towers(tiny_config)
        weights = [v for k, v in model.vision.state_dict().items() if k.endswith("conv1.weight")]
        assert len(weights) == 1 and torch.equal(weights[0], expected)


def test_a_text_encoder_with_pickle_weights_is_refused(tiny_config, tmp_path, marker):
    from transformers import AutoConfig

    folder = tmp_path / "encoder"
    folder.mkdir()
    hf = dict(tiny_config.text.hf_config)
    AutoConfig.for_model(hf.pop("model_type"), **hf).save_pretrained(folder)
    _malicious(folder / "pytorch_model.bin", marker)
    tiny_config.text.name_or_path, tiny_config.text.hf_config = str(folder), None
    with pytest.raises(UnsafeFileError, match="refused: its weights file holds objects other than tensors"):
        MMRadModel.from_towers(tiny_config)


def test_a_model_folder_cannot_switch_on_trust_remote_code(saved_model):
    config = json.loads((saved_model / "config.json").read_text())
    config["text"]["trust_remote_code"] = True
    (saved_model / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pass trust_remote_code=True to from_pretrained only if you trust it"):
        MMRadModel.from_pretrained(saved_model)
    model = MMRadModel.from_pretrained(saved_model, trust_remote_code=True)  # the user's own decision
    assert model.config.text.trust_remote_code is True


def test_checkpoint_folders_are_mmrad_own_files_only(tmp_path):
    """--resume loads accelerate's pickled RNG state: only from OUT/checkpoints/step_* folders mmrad completed."""
    from mmrad.training.checkpoints import latest_checkpoint

    root = tmp_path / "checkpoints"
    planted = root / "step_00000009"  # no COMPLETE marker and no trainer state: not written by mmrad's save
    planted.mkdir(parents=True)
    shutil.copy(__file__, planted / "random_states_0.pkl")
    assert latest_checkpoint(root) is None


def test_the_payload_is_live(tmp_path):
    """The tests above mean something: loading the payload without weights_only runs it."""
    ran = tmp_path / "ran"
    torch.load(_malicious(tmp_path / "evil.bin", ran), weights_only=False)
    assert ran.exists()
