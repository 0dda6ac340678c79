"""Caches of model outputs for zero-shot scoring: query text embeddings and image features.

Text embeddings are cached, keyed by a hash of the text side's weights and the text: a new query set over the same
images costs only the new texts' forward passes, a repeated one none (``cache_dir`` keeps them across runs). Image
features can be cached on disk too, keyed by a hash of the image side's weights and preprocessing and of the image's
identity (path, size and mtime; corpus fingerprint and row): a new query set over the same images then costs no image
forward pass, nor any image decoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def weights_key(modules) -> str:
    """A stable hash of the weights of ``modules`` (an nn.Module or a list of them): the cache key of their outputs."""
    digest = hashlib.sha256()
    for module in modules if isinstance(modules, list | tuple) else [modules]:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class TextEmbeddingCache:
    """Query embeddings of one model, cached by (text-side weights, text) in memory and optionally on disk."""

    batch_size = 256  # texts per text-tower forward (prompts are short)

    def __init__(self, model, cache_dir: str | Path | None = None):
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._memory: dict[tuple[str, str], torch.Tensor] = {}
        self._key: str | None = None
        self._fingerprint = None
        self._generation = 0
        self.computed = 0  # texts that went through the text tower (for tests and benchmarks)

    def key(self) -> str:
        # in-place updates (optimizer steps, load_state_dict) bump a tensor's version; moves change its pointer
        params = [*self.model.text.parameters(), *self.model.text_proj.parameters()]
        fingerprint = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if fingerprint != self._fingerprint:  # weights changed (or first use)
            self._generation += 1
            # only keys on disk must survive the process: hashing a large tower's weights takes a second or more
            self._key = (
                weights_key([self.model.text, self.model.text_proj]) if self.cache_dir else f"mem{self._generation}"
            )
            self._fingerprint = fingerprint
        return self._key

    def _path(self, key: str, text: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / key / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()[:24]}.npy"

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(Q, P) L2-normalised embeddings of ``texts``."""
        key = self.key()
        missing = []
        for text in dict.fromkeys(texts):
            if (key, text) in self._memory:
                continue
            path = self._path(key, text)
            if path is not None and path.is_file():
                self._memory[(key, text)] = torch.from_numpy(np.load(path))
            else:
                missing.append(text)
        if missing:
            # one large batch: with 64-text chunks (embed_texts' default) 120 prompts took 1.4x as long on CPU
            embeds = self.model.embed_texts(missing, batch_size=self.batch_size).float().cpu()
            self.computed += len(missing)
            for text, embed in zip(missing, embeds, strict=True):
                self._memory[(key, text)] = embed
                path = self._path(key, text)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")  # ranks may write the same text
                    np.save(tmp, embed.numpy())
                    tmp.replace(path)
        return torch.stack([self._memory[(key, t)] for t in texts]).to(self.model.device)


class ImageFeatureCache:
    """Image features of one model on disk, one safetensors file per image and feature kind.

    The folder is keyed by a hash of the image side's weights (vision tower, image and patch projections) and of the
    preprocessing config; the file by a hash of the image's identity: resolved path, size and mtime for files, the
    corpus split's fingerprint and row for corpus rows. File names hold only hashes (never a path or patient name).
    """

    def __init__(self, model, cache_dir: str | Path):
        self.model = model
        self.cache_dir = Path(cache_dir)
        self._key: str | None = None
        self._fingerprint = None
        self.hits = self.stored = 0  # images read from / written to the cache (for tests and benchmarks)

    def key(self) -> str:
        modules = [self.model.vision, self.model.image_proj, self.model.patch_proj]
        fingerprint = tuple((p.data_ptr(), p._version, p.dtype) for m in modules for p in m.parameters())
        if fingerprint != self._fingerprint:
            digest = hashlib.sha256(weights_key(modules).encode())
            digest.update(json.dumps(self.model.config.preprocess.__dict__, sort_keys=True, default=str).encode())
            self._key, self._fingerprint = digest.hexdigest()[:16], fingerprint
        return self._key

    @staticmethod
    def identities(items: list, corpus_split=None) -> list[str]:
        """A hash per item: what makes its model input (file path + size + mtime, or corpus fingerprint + row)."""
        corpus = ""
        if corpus_split is not None:
            files = [(f["filename"], os.stat(f["filename"]).st_size, os.stat(f["filename"]).st_mtime_ns)
                     for f in corpus_split.cache_files]  # fmt: skip
            corpus = f"{corpus_split._fingerprint}|{files}"
        out = []
        for item in items:
            if item.row is not None:
                ident = f"corpus|{corpus}|{item.row}"
            else:
                try:
                    path = Path(item.path).resolve()
                    st = path.stat()
                    ident = f"file|{path}|{st.st_size}|{st.st_mtime_ns}"
                except OSError:
                    ident = f"unreadable|{item.path}"
            out.append(hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32])
        return out

    def _path(self, identity: str, kind: str) -> Path:
        return self.cache_dir / self.key() / f"{identity}.{kind}.safetensors"

    def load(self, identity: str, kinds: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
        """The cached features of one image (each kind without the batch dimension), or None on a miss."""
        from safetensors.torch import load_file

        paths = [self._path(identity, kind) for kind in kinds]
        if not all(p.is_file() for p in paths):
            return None
        try:
            out = {kind: load_file(str(p))[kind] for kind, p in zip(kinds, paths, strict=True)}
        except Exception as err:  # a damaged cache file is a miss, never a failed run
            logger.warning("image feature cache: unreadable entry, recomputing (%s)", type(err).__name__)
            return None
        self.hits += 1
        return out

    def save(self, identity: str, features: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        for kind, tensor in features.items():
            path = self._path(identity, kind)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({kind: tensor.detach().to("cpu").contiguous()}, str(tmp))
            os.replace(tmp, path)
        self.stored += 1
