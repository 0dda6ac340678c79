"""mmrad: multimodal radiology — image towers x clinical text, LoRA fine-tuning, grounding and zero-shot queries."""

__version__ = "0.1.0"
