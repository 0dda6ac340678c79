"""Drawing the phantom's chest radiographs (see :mod:`mmrad.phantom.corpus`, which writes the corpus).

Coordinates are in units of the image height, x measured from the image centre + 0.5, so anatomy keeps its shape
in narrower or wider images. Laterality follows the radiological convention: the patient's right is the image's left.
"""

from __future__ import annotations

import numpy as np

WORK_SIZE = 256  # larger phantoms are drawn at this height and upsampled


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field_ = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return field_ / (field_.std() + 1e-6)


def anatomy(rng: np.random.Generator) -> dict:
    """Per-patient anatomy in units of the image height (x measured from the image centre + 0.5)."""
    return {
        "cx": 0.5 + rng.normal(0, 0.01),
        "top": rng.uniform(0.12, 0.17),
        "bottom": rng.uniform(0.74, 0.80),
        "lung_hw": rng.uniform(0.15, 0.175),
        "gap": rng.uniform(0.07, 0.085),
        "heart_hw": rng.uniform(0.16, 0.185),
        "heart_hh": rng.uniform(0.11, 0.13),
        "heart_cy": rng.uniform(0.6, 0.64),
        "body_hw": rng.uniform(0.42, 0.47),
        "cardio_factor": rng.uniform(1.5, 1.75),  # heart width factor if this patient has cardiomegaly
    }


def _lungs(a: dict, x: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, float, float, float, float]]:
    """Lung masks by the patient's side with (mask, centre x, centre y, half width, half height)."""
    ly, lh = (a["top"] + a["bottom"]) / 2, (a["bottom"] - a["top"]) / 2
    out = {}
    for side, sign in (("right", -1), ("left", 1)):
        lx = a["cx"] + sign * (a["gap"] + a["lung_hw"])
        dx, dy = (x - lx) / a["lung_hw"], (y - ly) / lh
        out[side] = (np.abs(dx) ** 2.4 + np.abs(dy) ** 2.4 < 1.0, lx, ly, a["lung_hw"], lh)
    return out


def render(a: dict, findings: list, h: int, w: int, rng: np.random.Generator):
    """Draw one study: float32 image in [0, 1] and a bool mask per present finding."""
    from scipy.ndimage import gaussian_filter
    from scipy.special import expit

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = (y + 0.5) / h, (x + 0.5 - w / 2) / h + 0.5
    px = 1.0 / h  # one pixel in height units
    lungs = _lungs(a, x, y)
    by_name = {f.name: f for f in findings}
    masks: dict[str, np.ndarray] = {}

    body = ((x - a["cx"]) / a["body_hw"]) ** 2 + ((y - 0.62) / 0.62) ** 4 < 1.0
    img = np.where(body, 0.40 - 0.12 * np.abs(x - a["cx"]) / a["body_hw"], 0.05).astype(np.float32)
    img = np.where(body & (y > a["bottom"] - 0.05 * np.cos((x - a["cx"]) * 3)), 0.55, img)  # abdomen under domes
    vessels = _smooth_noise(rng, (h, w), max(0.8, 0.012 * h))
    lung_any = lungs["right"][0] | lungs["left"][0]
    hilum = np.exp(-np.minimum(np.hypot(x - a["cx"] + 0.12, y - 0.45), np.hypot(x - a["cx"] - 0.12, y - 0.45)) / 0.2)
    lung_val = 0.2 + 0.035 * vessels * (0.5 + hilum) + 0.06 * hilum
    img = np.where(lung_any, lung_val, img)
    # ribs: bands curving down laterally, over the lungs and chest wall
    rib_phase = (y - a["top"] + 0.03 - 0.35 * (x - a["cx"]) ** 2) / 0.075
    ribs = np.clip(1.0 - np.abs(rib_phase - np.round(rib_phase)) / 0.16, 0, 1) * (y < a["bottom"]) * body
    img += 0.06 * ribs
    img = np.where(np.abs(x - a["cx"]) < a["gap"] * 0.9, np.maximum(img, 0.6 + 0.05 * (y < 0.4)), img)
    heart_hw = a["heart_hw"] * (a["cardio_factor"] if "Cardiomegaly" in by_name else 1.0)
    hx = a["cx"] + 0.035
    heart = ((x - hx) / heart_hw) ** 2 + ((y - a["heart_cy"]) / a["heart_hh"]) ** 2 < 1.0
    img = np.where(heart, 0.63, img)
    if "Cardiomegaly" in by_name:
        masks["Cardiomegaly"] = heart
    lung_open = {s: m & ~heart for s, (m, *_) in lungs.items()}

    for _ in range(int(rng.integers(1, 4))):  # end-on vessels: small dots that are not nodules
        side = "right" if rng.random() < 0.5 else "left"
        m, lx, ly, lw, lh = lungs[side]
        cxv, cyv = lx + rng.uniform(-0.5, 0.5) * lw, ly + rng.uniform(-0.4, 0.4) * lh
        img += 0.12 * np.exp(-(((x - cxv) ** 2 + (y - cyv) ** 2) / (rng.uniform(0.01, 0.016) ** 2))) * m

    # pleural fluid first, so that consolidation and nodules are placed where the fluid does not hide them
    fluid_alpha = None
    f = by_name.get("Pleural Effusion")
    if f:
        frac = {"small": 0.22, "moderate": 0.32, "large": 0.45}[f.size]
        fluid_alpha = np.zeros((h, w), dtype=np.float32)
        for side, sign in (("right", -1), ("left", 1)):
            if f.side in (side, "bilateral"):
                m, lx, ly, lw, lh = lungs[side]
                lateral = np.clip(sign * (x - lx) / lw, 0, 1)
                level = a["bottom"] - frac * 2 * lh - 0.07 * lateral  # the meniscus rises laterally
                fluid_alpha += expit((y - level) / (1.2 * px)) * lung_open[side]
    free = {k: v & (fluid_alpha < 0.05) for k, v in lung_open.items()} if fluid_alpha is not None else lung_open

    f = by_name.get("Consolidation")
    if f:
        side = f.side
        m, lx, ly, lw, lh = lungs[side]
        zone = {"upper": y < ly - 0.05 * lh, "middle": (y > ly - 0.1 * lh) & (y < ly + 0.45 * lh),
                "lower": y > ly + 0.15 * lh}[f.location.split()[0]] & free[side]  # fmt: skip
        if "middle" in f.location:
            zone &= np.abs(x - lx) < 0.6 * lw
        if zone.sum() < 0.01 * h * w:  # a lower lobe mostly under fluid: its part above the fluid
            zone = free[side] & (y > ly - 0.3 * lh)
        ys, xs = np.nonzero(zone)
        i = int(rng.integers(len(ys)))
        cy, cx = (ys[i] + 0.5) / h, (xs[i] + 0.5 - w / 2) / h + 0.5
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.12**2)) + 0.3 * _smooth_noise(rng, (h, w), 0.03 * h)
        region = zone & (blob > 0.5)
        if region.sum() < 0.004 * h * w:  # a tiny zone: take the zone itself
            region = zone
        soft = gaussian_filter(region.astype(np.float32), max(0.6, 0.008 * h))
        bronchi = np.abs(_smooth_noise(rng, (h, w), max(0.6, 0.01 * h))) < 0.12
        img += soft * (0.42 - 0.12 * bronchi)
        masks["Consolidation"] = region

    f = by_name.get("Lung Lesion")
    if f:
        side = f.side
        m, lx, ly, lw, lh = lungs[side]
        r = float(f.size) / 2 / 30.0  # cm over a 30 cm field of view
        best = (-1.0, 0.0, 0.0)  # (free share of the nodule's square, cx, cy): the freest of the tries wins
        k = max(1, int(r * h))
        for _ in range(60):
            cx = lx + rng.uniform(-0.45, 0.45) * lw
            cy = ly + (rng.uniform(-0.6, -0.1) if f.location == "upper" else rng.uniform(0.1, 0.55)) * lh
            iy, ix = int(cy * h), int((cx - 0.5) * h + w / 2)
            if 0 <= iy < h and 0 <= ix < w and free[side][iy, ix]:
                share = float(free[side][max(0, iy - k) : iy + k + 1, max(0, ix - k) : ix + k + 1].mean())
                best = max(best, (share, cx, cy))
                if share > 0.9:
                    break
        _, cx, cy = best
        if best[0] < 0:  # the zone is all fluid or heart: anywhere in the open part of that lung
            ys, xs = np.nonzero(free[side] if free[side].any() else lungs[side][0])
            i = int(rng.integers(len(ys)))
            cy, cx = (ys[i] + 0.5) / h, (xs[i] + 0.5 - w / 2) / h + 0.5
        theta = np.arctan2(y - cy, x - cx)
        radius = r * (1 + 0.12 * np.sin(3 * theta + rng.uniform(0, 6.28)) + 0.06 * np.sin(5 * theta))
        d = np.hypot(x - cx, y - cy) / radius
        img += 0.5 * np.exp(-(d**4))
        masks["Lung Lesion"] = d < 1.0

    if fluid_alpha is not None:  # drawn last, over what the fluid hides
        img = img * (1 - fluid_alpha) + (0.58 + 0.03 * vessels) * fluid_alpha
        masks["Pleural Effusion"] = fluid_alpha > 0.5

    f = by_name.get("Pneumothorax")
    if f:
        s = {"small": 0.45, "moderate": 0.55, "large": 0.65}[f.size]
        sign = -1 if f.side == "right" else 1
        m, lx, ly, lw, lh = lungs[f.side]
        ilx, ily = lx - sign * s * lw * 0.5, ly + s * lh * 0.35
        inner = np.abs((x - ilx) / (lw * (1 - s))) ** 2.4 + np.abs((y - ily) / (lh * (1 - 0.5 * s))) ** 2.4 < 1.0
        crescent = m & ~inner & ~heart & (y < ly + 0.55 * lh)
        img = np.where(crescent, 0.02 + 0.04 * ribs + 0.01 * vessels, img)
        img += 0.06 * (inner & m & ~heart)  # the collapsed lung is denser
        edge = inner & (gaussian_filter(inner.astype(np.float32), 1.5 * max(1.0, h * 0.006)) < 0.95)
        img += 0.25 * (edge & m & (y < ly + 0.55 * lh))
        masks["Pneumothorax"] = crescent

    # exposure, contrast, blur, gamma, structured and quantum noise
    img = (img - 0.4) * rng.uniform(0.9, 1.1) + 0.4 + rng.normal(0, 0.02)
    img += 0.025 * _smooth_noise(rng, (h, w), 0.15 * h)
    img = gaussian_filter(img, max(0.4, 0.004 * h))
    img = np.clip(img, 0, 1) ** rng.uniform(0.9, 1.1)
    img += rng.normal(0, rng.uniform(0.01, 0.025), img.shape)
    return np.clip(img, 0, 1).astype(np.float32), masks


def upsample(img: np.ndarray, masks: dict, h: int, w: int, rng: np.random.Generator):
    from scipy.ndimage import zoom

    factors = (h / img.shape[0], w / img.shape[1])
    big = zoom(img, factors, order=1, grid_mode=True, mode="nearest")
    big += rng.normal(0, 0.01, big.shape).astype(np.float32)  # fine grain the low-resolution drawing lacks
    masks = {
        k: zoom(m.astype(np.uint8), factors, order=0, grid_mode=True, mode="nearest") > 0 for k, m in masks.items()
    }
    return np.clip(big, 0, 1).astype(np.float32), masks
