"""Exact, invertible geometry between an original mammogram and the model grid.

Every step that moves pixels on the way to the network (breast crop, horizontal flip, resize) is recorded in
an :class:`ImageGeometry`, so a heatmap, point or box computed on the model grid maps back to the original
pixels by the exact inverse of the same affine map.

Coordinates are continuous ``(x, y)`` = (column, row): pixel ``i`` covers ``[i, i + 1)`` and its centre is
``i + 0.5``. Under that convention crop, flip and resize are affine maps, and resampling uses
``align_corners=False`` so images follow the points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from numbers import Integral
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mammoxai.errors import MammoXAIError


@dataclass(frozen=True)
class ImageGeometry:
    """Crop → optional horizontal flip → resize, from an original image to the model grid.

    Args:
        original_shape: (H, W) of the original image.
        crop: (y0, x0, y1, x1), half-open pixel box of the original kept for the model.
        flip: whether the crop is mirrored left-right (to put the chest wall on the left).
        output_shape: (h, w) of the model grid.

    Example:
        geometry = ImageGeometry((3000, 2400), crop=(100, 0, 2900, 1500), flip=True, output_shape=(512, 416))
        model_image = geometry.apply(pixels)
        heatmap_on_original = geometry.restore(heatmap)
    """

    original_shape: tuple[int, int]
    crop: tuple[int, int, int, int]
    flip: bool
    output_shape: tuple[int, int]

    def __post_init__(self) -> None:
        # frozen, so normalise through object.__setattr__: lists and NumPy integers from JSON or array maths
        # become plain int tuples, which keeps the record hashable, comparable and JSON-serialisable
        object.__setattr__(self, "original_shape", _int_tuple(self.original_shape, 2, "original_shape"))
        object.__setattr__(self, "crop", _int_tuple(self.crop, 4, "crop"))
        object.__setattr__(self, "output_shape", _int_tuple(self.output_shape, 2, "output_shape"))
        object.__setattr__(self, "flip", bool(self.flip))
        height, width = self.original_shape
        y0, x0, y1, x1 = self.crop
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise MammoXAIError(
                "geometry", f"crop {self.crop} does not lie inside an image of shape {self.original_shape}"
            )
        if min(self.output_shape) < 1:
            raise MammoXAIError("geometry", f"output shape {self.output_shape} must be positive")

    @classmethod
    def identity(cls, shape: tuple[int, int]) -> ImageGeometry:
        """The geometry that changes nothing: for images already on the model grid."""
        return cls(shape, (0, 0, shape[0], shape[1]), False, shape)

    @property
    def crop_shape(self) -> tuple[int, int]:
        y0, x0, y1, x1 = self.crop
        return y1 - y0, x1 - x0

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) model pixels per original pixel."""
        crop_h, crop_w = self.crop_shape
        return self.output_shape[1] / crop_w, self.output_shape[0] / crop_h

    # -- points and boxes -------------------------------------------------------------------------------------
    def to_model_points(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) continuous (x, y) points from the original image to the model grid."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        y0, x0, _, _ = self.crop
        x, y = points[:, 0] - x0, points[:, 1] - y0
        if self.flip:
            x = self.crop_shape[1] - x
        sx, sy = self.scale
        return np.stack([x * sx, y * sy], axis=1)

    def to_original_points(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) continuous (x, y) points from the model grid back to the original image."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        x, y = points[:, 0] / sx, points[:, 1] / sy
        if self.flip:
            x = self.crop_shape[1] - x
        y0, x0, _, _ = self.crop
        return np.stack([x + x0, y + y0], axis=1)

    def to_model_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) boxes (x0, y0, x1, y1) from the original image to the model grid."""
        return self._map_boxes(boxes, self.to_model_points)

    def to_original_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) boxes (x0, y0, x1, y1) from the model grid back to the original image."""
        return self._map_boxes(boxes, self.to_original_points)

    @staticmethod
    def _map_boxes(boxes: np.ndarray, map_points: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        first, second = map_points(boxes[:, :2]), map_points(boxes[:, 2:])
        # a flip swaps left and right edges: re-sort so x0 <= x1 holds after mapping
        return np.concatenate([np.minimum(first, second), np.maximum(first, second)], axis=1)

    # -- images -----------------------------------------------------------------------------------------------
    def apply(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Crop, flip and resize an image (..., H, W) onto the model grid; returns a float32 tensor (..., h, w)."""
        tensor = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
        self._check_trailing_shape(tensor, self.original_shape, "image")
        y0, x0, y1, x1 = self.crop
        tensor = tensor[..., y0:y1, x0:x1].float()  # before the flip: torch cannot flip every integer dtype
        if self.flip:
            tensor = tensor.flip(-1)
        return _resize(tensor, self.output_shape)

    def restore(self, heatmap: np.ndarray | torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Map a model-grid map (..., h, w) back onto the original pixel grid (..., H, W).

        Outside the crop (background, labels, markers) the map is ``fill``. Inside, each map keeps its own range:
        the resampling weights sum to one only up to rounding, which took a [0, 1] map to 1.0000001.
        """
        tensor = torch.as_tensor(heatmap)
        self._check_trailing_shape(tensor, self.output_shape, "heatmap")
        tensor = tensor.float()
        low, high = tensor.amin(dim=(-2, -1), keepdim=True), tensor.amax(dim=(-2, -1), keepdim=True)
        tensor = _resize(tensor, self.crop_shape).clamp(low, high)
        if self.flip:
            tensor = tensor.flip(-1)
        out = tensor.new_full((*tensor.shape[:-2], *self.original_shape), fill)
        y0, x0, y1, x1 = self.crop
        out[..., y0:y1, x0:x1] = tensor
        return out

    @staticmethod
    def _check_trailing_shape(tensor: torch.Tensor, expected: tuple[int, int], what: str) -> None:
        if tensor.ndim < 2 or tuple(tensor.shape[-2:]) != tuple(expected):
            raise MammoXAIError(what, f"has shape {tuple(tensor.shape)}, expected (..., {expected[0]}, {expected[1]})")

    # -- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageGeometry:
        try:
            return cls(data["original_shape"], data["crop"], data["flip"], data["output_shape"])
        except KeyError as missing:
            raise MammoXAIError("geometry", f"record has no {missing} entry", "write it with to_dict()") from None


def _int_tuple(values: Any, length: int, name: str) -> tuple[int, ...]:
    """``values`` as a tuple of ``length`` Python ints, or a MammoXAIError naming ``name``."""
    items = tuple(values) if isinstance(values, (tuple, list, np.ndarray, torch.Size)) else ()
    if len(items) != length or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in items):
        raise MammoXAIError("geometry", f"{name} {values!r} must be {length} integers")
    return tuple(int(v) for v in items)


def _resize(tensor: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two axes with ``align_corners=False`` (the continuous-coordinate convention).

    Downsampling is antialiased (a triangle filter as wide as one output pixel), both ways: on the way to the
    model so small calcifications are averaged in rather than skipped, and on the way back so a heatmap from
    a model grid finer than the crop keeps its peaks instead of landing between the sampled pixels.
    """
    if tuple(tensor.shape[-2:]) == tuple(shape):
        return tensor.clone()
    if shape[1] == 1 and shape[0] != 1:
        # torch's antialiased kernel returns wrong values for a one-column output; one row is fine, so transpose
        return _resize(tensor.transpose(-1, -2), (shape[1], shape[0])).transpose(-1, -2).contiguous()
    leading = tensor.shape[:-2]
    flat = tensor.reshape(-1, 1, *tensor.shape[-2:])
    downsampling = shape[0] < tensor.shape[-2] or shape[1] < tensor.shape[-1]
    resized = F.interpolate(flat, size=tuple(shape), mode="bilinear", align_corners=False, antialias=downsampling)
    return resized.reshape(*leading, *shape)
