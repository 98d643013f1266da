"""Regenerate the cue images in this directory: `python stimuli/make_cues.py`.

Flat shapes on a transparent background, 256 x 256 RGBA, anti-aliased by 4x4
supersampling. Colours are luminance-matched to about 0.35 (Rec. 709 relative
luminance of the sRGB values) so the cues differ in shape and hue, not brightness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imsave

SIZE = 256
SUPER = 4
HERE = Path(__file__).resolve().parent


def _grid() -> tuple[np.ndarray, np.ndarray]:
    n = SIZE * SUPER
    c = (np.arange(n) + 0.5) / n * 2 - 1          # -1 .. 1, y up
    x, y = np.meshgrid(c, -c)
    return x, y


def _rgba(mask: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    alpha = mask.reshape(SIZE, SUPER, SIZE, SUPER).mean(axis=(1, 3))
    out = np.zeros((SIZE, SIZE, 4))
    out[..., :3] = rgb
    out[..., 3] = alpha
    return out


def triangle() -> np.ndarray:
    x, y = _grid()
    # upward equilateral triangle inscribed in a circle of radius 0.9
    r = 0.9
    inside = (y >= -r / 2) & (y <= r - np.sqrt(3) * np.abs(x))
    return inside


def circle() -> np.ndarray:
    x, y = _grid()
    return x ** 2 + y ** 2 <= 0.8 ** 2


if __name__ == "__main__":
    imsave(HERE / "orange_triangle.png", _rgba(triangle(), (0.92, 0.53, 0.0)))
    imsave(HERE / "blue_circle.png", _rgba(circle(), (0.28, 0.645, 0.98)))
