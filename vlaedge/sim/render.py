"""Top-down numpy renderer for the tabletop scene, and the scene state it draws.

Table coordinates are the unit square: x grows to the right (image columns), y grows downwards
(image rows), so point (x, y) lands on pixel (row=int(y * H), col=int(x * W)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vlaedge.sim.instructions import Task

MIN_IMAGE_SIZE = 32

BLOCK_SIZE = 0.1  # side of a block, table units
ZONE_SIZE = 0.22  # side of a target zone, table units
EE_RADIUS = 0.04  # end-effector marker radius, table units (small enough to leave a held block visible)
EE_RING_WIDTH = 0.02  # width of the open-gripper ring, table units (at least one pixel)

BLOCK_RGB = np.array([(220, 40, 40), (40, 180, 40), (40, 70, 220)], np.uint8)  # red, green, blue
ZONE_RGB = np.array([(235, 205, 40), (150, 60, 170), (40, 200, 210)], np.uint8)  # yellow, purple, cyan
BACKGROUND_RGB = np.array((205, 205, 205), np.uint8)  # light gray table
EE_RGB = np.array((30, 30, 30), np.uint8)  # dark end effector


def _frozen(values: np.ndarray) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class SimState:
    """The privileged scene state: everything the renderer and the scripted expert need.

    Arrays are read-only copies, so a snapshot never changes under its holder.

    Attributes:
        ee: float64 [2] end-effector position (x, y) in table units.
        gripper_closed: whether the gripper is closed.
        held: index into `BLOCKS` of the held block, None when nothing is held.
        block_pos: float64 [3, 2] block centres, in `BLOCKS` order.
        zone_pos: float64 [3, 2] zone centres, in `ZONES` order.
        task: the episode's true task.
    """

    ee: np.ndarray
    gripper_closed: bool
    held: int | None
    block_pos: np.ndarray
    zone_pos: np.ndarray
    task: Task

    def __post_init__(self) -> None:
        for name in ("ee", "block_pos", "zone_pos"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))


def _disk_masks(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (2h+1, 2h+1) masks of the closed (disk) and open (ring) end effector at `size` pixels."""
    radius = EE_RADIUS * size
    half = math.ceil(radius)
    offsets = np.arange(-half, half + 1)
    dist = np.hypot(offsets[:, None], offsets[None, :])
    disk = dist <= radius
    ring = disk & (dist > radius - max(1.0, EE_RING_WIDTH * size))
    return disk, ring


class Renderer:
    """Draws `SimState`s at a fixed image size; the zone background is cached per layout.

    Args:
        image_size: height and width of the square image in pixels, at least 32.

    Raises:
        ValueError: if `image_size` is below 32.
    """

    def __init__(self, image_size: int = 64):
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size: {image_size} is too small, use at least {MIN_IMAGE_SIZE} pixels")
        self.image_size = int(image_size)
        self._masks = _disk_masks(self.image_size)  # (closed, open)
        self._background_key: bytes | None = None
        self._background = np.empty((self.image_size, self.image_size, 3), np.uint8)

    def render(self, state: SimState) -> np.ndarray:
        """Draw the scene: table, zones, blocks (the held one last) and the end effector on top.

        Args:
            state: the scene to draw.

        Returns:
            uint8 [H, W, 3] RGB image.
        """
        key = state.zone_pos.tobytes()
        if key != self._background_key:
            self._background = self._draw_background(state.zone_pos)
            self._background_key = key
        image = self._background.copy()
        order = [i for i in range(len(state.block_pos)) if i != state.held]
        if state.held is not None:
            order.append(state.held)
        for i in order:
            self._fill_square(image, state.block_pos[i], BLOCK_SIZE, BLOCK_RGB[i])
        self._stamp_ee(image, state.ee, self._masks[0] if state.gripper_closed else self._masks[1])
        return image

    def _draw_background(self, zone_pos: np.ndarray) -> np.ndarray:
        image = np.empty((self.image_size, self.image_size, 3), np.uint8)
        image[:] = BACKGROUND_RGB
        for i, pos in enumerate(zone_pos):
            self._fill_square(image, pos, ZONE_SIZE, ZONE_RGB[i])
        return image

    def _fill_square(self, image: np.ndarray, centre: np.ndarray, side: float, rgb: np.ndarray) -> None:
        n = self.image_size
        side_px = max(1, round(side * n))  # constant pixel size wherever the square lies
        row0 = round(centre[1] * n - side_px / 2)
        col0 = round(centre[0] * n - side_px / 2)
        image[max(row0, 0) : max(row0 + side_px, 0), max(col0, 0) : max(col0 + side_px, 0)] = rgb

    def _stamp_ee(self, image: np.ndarray, ee: np.ndarray, mask: np.ndarray) -> None:
        n, half = self.image_size, mask.shape[0] // 2
        row, col = min(int(ee[1] * n), n - 1) - half, min(int(ee[0] * n), n - 1) - half
        top, left = max(-row, 0), max(-col, 0)  # mask rows/cols cut off by the image border
        bottom, right = min(n - row, mask.shape[0]), min(n - col, mask.shape[1])
        patch = image[row + top : row + bottom, col + left : col + right]
        patch[mask[top:bottom, left:right]] = EE_RGB


@lru_cache(maxsize=8)
def _renderer(image_size: int) -> Renderer:
    return Renderer(image_size)


def render(state: SimState, image_size: int = 64) -> np.ndarray:
    """Draw a scene with a shared renderer for `image_size`.

    Args:
        state: the scene to draw.
        image_size: height and width in pixels, at least 32; objects scale with it.

    Returns:
        uint8 [H, W, 3] RGB image.

    Raises:
        ValueError: if `image_size` is below 32.
    """
    return _renderer(int(image_size)).render(state)
