"""Pictures of environments for people: a PNG of a world, an animated GIF of an episode (from
the RGB arrays that ``ForagingWorlds.image`` and ``ForagingEnv.render`` return). Pillow comes
with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Each cell as a ``scale`` x ``scale`` block, so a 50 x 50 world is visible."""
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def save_png(image: np.ndarray, path: str | Path, scale: int = 8) -> Path:
    """Write an RGB array ``(height, width, 3)`` uint8 as a PNG, cells enlarged ``scale`` times."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_upscale(np.asarray(image, np.uint8), scale)).save(path)
    return path


def save_gif(
    frames: Sequence[np.ndarray], path: str | Path, scale: int = 6, frame_ms: int = 80
) -> Path:
    """Write RGB frames as an animated GIF that loops, ``frame_ms`` per frame."""
    from PIL import Image

    if not len(frames):
        raise ValueError("save_gif needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(_upscale(np.asarray(f, np.uint8), scale)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path
