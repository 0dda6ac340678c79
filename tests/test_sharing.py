"""Issue 8: full and adapter-only folders reload in a fresh process to identical outputs."""

import subprocess
import sys

import numpy as np
import torch

from mmrad.config.schema import LoraSettings
from mmrad.models import MMRadModel, apply_lora
from tests.conftest import REPO

FRESH = """
import sys, numpy as np, torch
from mmrad.models import MMRadModel
torch.manual_seed(0)
batch = torch.load(sys.argv[2], weights_only=True)
model = MMRadModel.from_pretrained(sys.argv[1])
with torch.no_grad():
    out = model(**batch)
np.save(sys.argv[3], np.concatenate([out.logits.numpy().ravel(), out.image_embeds.numpy().ravel()]))
"""


def test_full_and_adapter_only_folders_reload_identically_in_a_fresh_process(tmp_path, tiny_config, batch):
    torch.manual_seed(0)
    MMRadModel(tiny_config).save_pretrained(tmp_path / "base")
    model = MMRadModel.from_pretrained(tmp_path / "base")
    apply_lora(model, LoraSettings(enabled=True, r=4, alpha=8))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(**batch).loss.backward()  # the adapters and new modules move away from their initial values
    optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    expected = np.concatenate([out.logits.numpy().ravel(), out.image_embeds.numpy().ravel()])
    full = model.save_pretrained(tmp_path / "full")
    adapters = model.save_pretrained(tmp_path / "adapters", adapter_only=True)
    torch.save(batch, tmp_path / "batch.pt")
    for folder in (full, adapters):
        result = tmp_path / f"{folder.name}.npy"
        cmd = [sys.executable, "-c", FRESH, str(folder), str(tmp_path / "batch.pt"), str(result)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stderr[-2000:]
        np.testing.assert_allclose(np.load(result), expected, atol=1e-5, rtol=0)
    assert (adapters / "adapter_model.safetensors").stat().st_size < (full / "model.safetensors").stat().st_size
    for folder in (full, adapters):  # every saved folder is Hub-ready: card and prompt bank included
        assert (folder / "README.md").is_file() and (folder / "prompt_bank.yaml").is_file()
