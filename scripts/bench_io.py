"""Decode throughput of mmrad's read_dicom vs plain pydicom (dcmread + pixel_array) on the same files.

read_dicom adds the Modality LUT, windowing, BitsStored scaling, MONOCHROME1 inversion and [0, 1] float32 output;
the goal is that all of that costs at most 1.3x the plain decode. Both are timed in one run, interleaved.

    .venv/bin/python scripts/bench_io.py [--repeats 5] [--dicom-dir ../shared/data/dicom]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from benchlib import add_common_arguments, record
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from mmrad.io.dicom import read_dicom, write_dicom

BUNDLED = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "693_J2KI.dcm", "JPGExtended.dcm", "MR_small_RLE.dcm"]


def synthetic_chests(folder: Path) -> list[Path]:
    """Chest-sized 12-bit radiographs: uncompressed MONOCHROME2 with a window, RLE MONOCHROME1."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:2048, 0:2048]
    body = (2000 + 1500 * np.exp(-(((xx - 1024) / 500.0) ** 2)) + rng.normal(0, 50, (2048, 2048))).clip(0, 4095)
    pixels = body.astype(np.uint16)
    paths = [folder / "chest_plain.dcm", folder / "chest_rle_m1.dcm"]
    write_dicom(paths[0], pixels, bits_stored=12, window=(2500, 3000), PixelSpacing=[0.15, 0.15])
    write_dicom(paths[1], pixels, photometric="MONOCHROME1", bits_stored=12, compress=RLELossless,
                PixelSpacing=[0.15, 0.15])  # fmt: skip
    return paths


def plain(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


def ours(path: Path) -> np.ndarray:
    return read_dicom(path)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dicom-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/dicom")
    add_common_arguments(parser)  # decoding runs on the CPU whatever --device says
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(get_testdata_file(n)) for n in BUNDLED] + synthetic_chests(Path(tmp))
        if args.dicom_dir.is_dir():
            files += sorted(args.dicom_dir.glob("*.dcm"))
        totals = {"plain": 0.0, "ours": 0.0}
        rows = []
        for path in files:
            plain(path), ours(path)  # warm up caches and plugin imports
            t = {"plain": [], "ours": []}
            for _ in range(args.repeats):
                for name, fn in (("plain", plain), ("ours", ours)):
                    start = time.perf_counter()
                    fn(path)
                    t[name].append(time.perf_counter() - start)
            med = {k: float(np.median(v)) for k, v in t.items()}
            totals["plain"] += med["plain"]
            totals["ours"] += med["ours"]
            rows.append((path.name, med["plain"] * 1e3, med["ours"] * 1e3, med["ours"] / med["plain"]))

    print(f"{'file':<45} {'pydicom ms':>11} {'mmrad ms':>9} {'ratio':>6}")
    for name, p, o, r in rows:
        print(f"{name:<45} {p:>11.2f} {o:>9.2f} {r:>6.2f}")
    ratio = totals["ours"] / totals["plain"]
    print(f"\nall files: read_dicom / plain decode = {ratio:.3f} (goal <= 1.3), over {len(rows)} files")
    record(args, "read_dicom vs pydicom decode", value=totals["ours"], baseline=totals["plain"], ratio=ratio,
           goal=1.3, higher_is_better=False, unit=f"s (sum of per-file medians, {len(rows)} files)")  # fmt: skip


if __name__ == "__main__":
    main()
