"""The generated data set of the embedded default: shapes as classes, colours as subgroups.

Every image is drawn from a seeded generator, so the class and the subgroup of each image are
known by construction. Variety that keeps recognition from being trivial: random size, position
and rotation of the shape, a jittered hue, saturation and brightness of its colour, a random
low-saturation background with a gradient, and pixel noise. Shapes are rendered at 4x the target
resolution and averaged down, so edges are anti-aliased.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar", "star", "crescent")
# Hue (degrees) of each colour subgroup; saturation and value are jittered per image.
COLOURS = {"red": 0.0, "green": 125.0, "blue": 225.0}

_SUPERSAMPLE = 4


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-test for a shape of radius 1 centred at the origin (x, y already rotated)."""
    r = np.hypot(x, y)
    if shape == "circle":
        return r <= 1.0
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.8
    if shape == "triangle":
        # Equilateral triangle inscribed in the unit circle, apex up.
        return (y >= -0.5) & (np.sqrt(3) * x - y >= -1.0) & (-np.sqrt(3) * x - y >= -1.0)
    if shape == "cross":
        w = 0.3
        return ((np.abs(x) <= w) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= w) & (np.abs(x) <= 1.0))
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if shape == "bar":
        return (np.abs(x) <= 1.0) & (np.abs(y) <= 0.32)
    if shape == "star":
        theta = np.arctan2(y, x)
        return r <= 0.5 + 0.5 * np.abs(np.cos(2.5 * theta)) ** 1.5
    if shape == "crescent":
        return (r <= 1.0) & (np.hypot(x - 0.45, y) >= 0.8)
    raise ValueError(f"unknown shape {shape!r}")


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (h in degrees) to RGB in [0, 1]; returns shape (..., 3)."""
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - np.abs(h % 2 - 1))
    m = v - c
    zeros = np.zeros_like(h)
    sector = np.floor(h).astype(int) % 6
    table = [(c, x, zeros), (x, c, zeros), (zeros, c, x), (zeros, x, c), (x, zeros, c),
             (c, zeros, x)]
    rgb = np.zeros(h.shape + (3,))
    for i, (r, g, b) in enumerate(table):
        sel = sector == i
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
    return rgb + m[..., None]


def render(shape: str, colour: str, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` images of one shape in one colour, as uint8 [count, size, size, 3]."""
    big = size * _SUPERSAMPLE
    coords = (np.arange(big) + 0.5) / big * 2 - 1  # pixel centres in [-1, 1]
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        radius = rng.uniform(0.5, 0.9)
        cx, cy = rng.uniform(-1 + radius, 1 - radius, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        x, y = (gx - cx) / radius, (gy - cy) / radius
        mask = _shape_mask(shape, cos * x + sin * y, -sin * x + cos * y).astype(np.float64)
        mask = mask.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))

        hue = COLOURS[colour] + rng.uniform(-18, 18)
        fg = _hsv_to_rgb(np.array(hue), np.array(rng.uniform(0.55, 1.0)),
                         np.array(rng.uniform(0.55, 1.0)))
        bg_hue = rng.uniform(0, 360, size=2)
        bg = _hsv_to_rgb(bg_hue, rng.uniform(0.0, 0.25, size=2), rng.uniform(0.15, 0.9, size=2))
        ramp = np.linspace(0, 1, size)[:, None, None]
        background = bg[0] * (1 - ramp) + bg[1] * ramp
        background = np.broadcast_to(background, (size, size, 3))
        if rng.random() < 0.5:
            background = background.transpose(1, 0, 2)
        image = background * (1 - mask[..., None]) + fg * mask[..., None]
        image = image + rng.normal(0, 0.04, size=image.shape)
        out[i] = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return out


def generate(*, train_per_subgroup: int, test_per_subgroup: int, image_size: int,
             seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """The whole data set: uint8 images and a table with class_name, subgroup, split, source.

    Each (shape, colour, split) cell draws from its own generator seeded from ``seed`` and the
    cell's position, so the same arguments always give the same bytes.
    """
    images, rows = [], []
    for si, shape in enumerate(SHAPES):
        for ci, colour in enumerate(COLOURS):
            for split_id, (split, count) in enumerate(
                    (("train", train_per_subgroup), ("test", test_per_subgroup))):
                rng = np.random.default_rng([seed, si, ci, split_id])
                images.append(render(shape, colour, count, image_size, rng))
                rows.extend({"class_name": shape, "subgroup": colour, "split": split,
                             "source": f"generated/{split}/{shape}/{colour}/{k:05d}"}
                            for k in range(count))
    return np.concatenate(images), pd.DataFrame(rows)
