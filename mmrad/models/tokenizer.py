"""Tokenizers that travel with the text tower.

* ``"mmrad:radiology_wordpiece"`` names the tiny WordPiece tokenizer shipped in ``mmrad/models/tokenizers/`` (used by
  the tiny towers of tests and the demo). Its vocabulary is built deterministically by :func:`build_wordpiece` from a
  hand-written radiology word list plus single characters, so any text is tokenizable, and the built file is
  committed rather than trained (WordPiece training is not deterministic).
* Any other name is a Hugging Face tokenizer folder or Hub id (``AutoTokenizer``).
* open_clip's own BPE tokenizer (native open_clip text towers) is wrapped by :class:`OpenCLIPTokenizer` so that it is
  called like a Hugging Face tokenizer.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections.abc import Iterable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

ASSET_DIR = Path(__file__).resolve().parent / "tokenizers"
BUILTIN_PREFIX = "mmrad:"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation
SUFFIXES = ["s", "es", "ed", "ing", "ly", "al", "ic", "ity", "ous", "ation", "ations", "ness", "er", "ers", "ment"]


def builtin_tokenizer_dir(name: str) -> Path:
    """The folder of a shipped tokenizer (``"mmrad:radiology_wordpiece"`` or ``"radiology_wordpiece"``)."""
    name = name.removeprefix(BUILTIN_PREFIX)
    path = ASSET_DIR / name
    if not (path / "tokenizer.json").is_file():
        shipped = sorted(p.name for p in ASSET_DIR.iterdir() if (p / "tokenizer.json").is_file())
        raise FileNotFoundError(f"no shipped tokenizer {name!r} (shipped: {', '.join(shipped)})")
    return path


def load_tokenizer(name_or_path: str, *, local_files_only: bool = True):
    """Load a tokenizer by shipped name (``mmrad:...``), local folder or Hub id.

    Args:
        name_or_path: ``"mmrad:radiology_wordpiece"``, a folder holding ``tokenizer.json``/``vocab.txt``, or a Hub id.
        local_files_only: never touch the network (a Hub id then only resolves from the local cache).
    """
    from transformers import AutoTokenizer

    if name_or_path.startswith(BUILTIN_PREFIX):
        return AutoTokenizer.from_pretrained(str(builtin_tokenizer_dir(name_or_path)), local_files_only=True)
    return AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)


def read_word_list(path: str | Path) -> list[str]:
    """Words of a word-list file: whitespace separated, ``#`` starts a comment."""
    words = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words.extend(line.split("#", 1)[0].split())
    return words


def build_wordpiece(words: Iterable[str], model_max_length: int = 512):
    """A WordPiece tokenizer whose vocabulary is: special tokens, single characters (alone and as ``##`` pieces),
    a few suffix pieces, then the given whole words, sorted. Deterministic: the same words give the same ids.

    Returns:
        A ``PreTrainedTokenizerFast`` (lower-cases, BERT pre-tokenization, ``[CLS] text [SEP]``).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        vocab.setdefault(token, len(vocab))
    for ch in CHARACTERS:
        vocab.setdefault(ch, len(vocab))
    for ch in CHARACTERS:
        vocab.setdefault("##" + ch, len(vocab))
    for suffix in SUFFIXES:
        vocab.setdefault("##" + suffix, len(vocab))
    pieces = {piece for word in words for piece in re.findall(r"[a-z0-9]+", word.lower())}
    for word in sorted(pieces):
        vocab.setdefault(word, len(vocab))

    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def build_radiology_wordpiece(out_dir: str | Path | None = None):
    """Build the shipped ``radiology_wordpiece`` tokenizer from its word list (``words.txt`` beside it, which alone
    decides the vocabulary); save it to ``out_dir`` when given."""
    words = read_word_list(ASSET_DIR / "radiology_wordpiece" / "words.txt")
    tokenizer = build_wordpiece(words)
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
        # name the class every transformers version knows (transformers 5 writes its own backend class name)
        config_path = Path(out_dir) / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return tokenizer


class OpenCLIPTokenizer:
    """open_clip's BPE tokenizer, called like a Hugging Face tokenizer.

    Native open_clip text towers need exactly ``context_length`` tokens (their causal mask has that size) and pool at
    the end-of-text token (the highest id), so every text is padded with 0 to ``context_length``.
    """

    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self._tok = SimpleTokenizer(context_length=context_length)
        self.pad_token_id = 0
        self.model_max_length = context_length

    def __len__(self) -> int:
        return self._tok.vocab_size

    @property
    def all_special_ids(self) -> list[int]:
        return [self.pad_token_id, self._tok.sot_token_id, self._tok.eot_token_id]

    def __call__(self, texts: str | list[str], return_tensors: str | None = "pt", **kwargs) -> dict:
        """Returns ``{"input_ids": (B, context_length), "attention_mask": (B, context_length)}`` (padding, truncation
        and max_length arguments are accepted and ignored: the length is always ``context_length``)."""
        if isinstance(texts, str):
            texts = [texts]
        ids = self._tok(list(texts), context_length=self.context_length)  # (B, L) long
        mask = (ids != self.pad_token_id).long()
        if return_tensors != "pt":
            return {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: torch.Tensor | list[int], skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self._tok.decode([i for i in ids if i != self.pad_token_id])

    def save_pretrained(self, path: str | Path) -> None:
        """Nothing to write: the BPE vocabulary ships with open_clip; the context length is in the model config."""
