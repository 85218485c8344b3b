"""The masking engine under occlusion, RISE, RELAX and CorRELAX: masked copies of a batch through a network, fast.

Perturbation methods all do the same thing — multiply images by many masks, run the network on the masked
copies, and sum mask-weighted scores — and differ only in the masks and in what they sum. This module does the
shared, expensive part once and well:

- masks are made **on the device** from a seed (:class:`RandomMasks`, the smooth random masks of RISE: Petsiuk
  et al., BMVC 2018, https://arxiv.org/abs/1806.07421; :class:`PatchMasks`, the sliding patches of occlusion), so
  nothing crosses the bus per mask and a seed reproduces the masks whatever the chunk size;
- the masked copies of every image of the batch go through the network **in chunks** (:class:`MaskedForward`),
  under mixed precision on a GPU, with the representation and scores returned in float32 so similarities are
  compared at full precision; a chunk that does not fit in GPU memory is retried at half the size;
- callers accumulate with sums / ``einsum`` over each chunk: there is no Python loop over masks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks import eval_mode
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.saliency.gradcam import find_layer

logger = logging.getLogger(__name__)

__all__ = ["MaskSource", "RandomMasks", "PatchMasks", "MaskedChunk", "MaskedForward"]


class MaskSource:
    """A deterministic, indexable set of ``len(self)`` masks (values in [0, 1], 1 = keep) of one image size."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        """Masks ``start`` to ``stop - 1`` as a float32 tensor (stop - start, H, W) on the source's device."""
        raise NotImplementedError


class RandomMasks(MaskSource):
    """Smooth random masks of RISE (Petsiuk et al. 2018), also those of RELAX (Wickstrøm et al. 2022).

    A ``grid`` × ``grid`` binary grid (each cell kept with probability ``keep_prob``) is upsampled bilinearly to
    ``(grid + 1) * cell`` pixels, with ``cell = ceil(size / grid)``, and cropped to ``size`` at a random shift of
    up to one cell, so the mask edges fall anywhere. All cells and shifts are drawn at construction from
    ``seed`` on ``device``; the upsampling happens per chunk, so only one chunk of full-size masks exists at once.

    Args:
        num_masks: how many masks.
        size: (H, W) of the images.
        grid: cells per side.
        keep_prob: probability that a cell is kept.
        seed: seed of the device generator.
        device: where the masks are made.

    Example:
        masks = RandomMasks(1280, (256, 256), grid=8, keep_prob=0.5, seed=0, device="cuda")
        first_chunk = masks(0, 256)  # (256, 256, 256) float32 on the GPU
    """

    def __init__(
        self,
        num_masks: int,
        size: tuple[int, int],
        grid: int = 8,
        keep_prob: float = 0.5,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_masks < 1 or grid < 1 or not 0.0 < keep_prob <= 1.0:
            problem = f"num_masks={num_masks}, grid={grid}, keep_prob={keep_prob}"
            raise MammoXAIError("saliency masks", problem, "use num_masks >= 1, grid >= 1, 0 < keep_prob <= 1")
        self.size = (int(size[0]), int(size[1]))
        self.keep_prob = float(keep_prob)
        self.cell = (math.ceil(self.size[0] / grid), math.ceil(self.size[1] / grid))
        generator = torch.Generator(device=device).manual_seed(int(seed))
        self.cells = (torch.rand(num_masks, 1, grid, grid, generator=generator, device=device) < keep_prob).float()
        self.shifts = torch.stack(
            [torch.randint(0, c, (num_masks,), generator=generator, device=device) for c in self.cell], dim=1
        )

    def __len__(self) -> int:
        return self.cells.shape[0]

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        grid = self.cells.shape[-1]
        upsampled = F.interpolate(
            self.cells[start:stop],
            size=((grid + 1) * self.cell[0], (grid + 1) * self.cell[1]),
            mode="bilinear",
            align_corners=False,
        )[:, 0]
        device = upsampled.device
        rows = self.shifts[start:stop, 0, None] + torch.arange(self.size[0], device=device)  # (n, H)
        cols = self.shifts[start:stop, 1, None] + torch.arange(self.size[1], device=device)  # (n, W)
        index = torch.arange(stop - start, device=device)[:, None, None]
        return upsampled[index, rows[:, :, None], cols[:, None, :]]


class PatchMasks(MaskSource):
    """Occlusion masks: one square patch of zeros per mask, slid over the image with a stride (Zeiler & Fergus 2014).

    Patches start at 0, ``stride``, ... and a last row / column is added flush with the far edge, so every pixel
    is occluded at least once.

    Args:
        size: (H, W) of the images.
        patch: side of the square patch in pixels.
        stride: step between patches.
        device: where the masks are made.
    """

    def __init__(self, size: tuple[int, int], patch: int, stride: int, device: torch.device | str = "cpu") -> None:
        if patch < 1 or stride < 1:
            raise MammoXAIError("saliency occlusion", f"patch={patch}, stride={stride}", "use positive integers")
        self.size = (int(size[0]), int(size[1]))
        self.patch = min(int(patch), *self.size)
        starts = [_starts(length, self.patch, int(stride)) for length in self.size]
        self.origins = torch.cartesian_prod(torch.tensor(starts[0]), torch.tensor(starts[1])).to(device)

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        origins = self.origins[start:stop]
        device = origins.device
        rows = torch.arange(self.size[0], device=device)[None, :] - origins[:, 0:1]
        cols = torch.arange(self.size[1], device=device)[None, :] - origins[:, 1:2]
        inside_rows = (rows >= 0) & (rows < self.patch)
        inside_cols = (cols >= 0) & (cols < self.patch)
        return 1.0 - (inside_rows[:, :, None] & inside_cols[:, None, :]).float()


def _starts(length: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


@dataclass
class MaskedChunk:
    """One chunk of masked passes: ``masks`` (n, H, W) and, per image and mask, float32 ``features`` (B, n, D)
    (the representation) and ``logits`` (B, n, C); ``start`` indexes the mask set."""

    start: int
    masks: torch.Tensor
    features: torch.Tensor
    logits: torch.Tensor


class MaskedForward:
    """Runs a network on masked copies of a batch, chunk by chunk, and returns float32 representations and logits.

    Args:
        nn_module: the network; its output are the class logits (B, C). Run in eval mode, without gradients.
        representation_layer: name of the layer whose output, flattened, is the representation compared by
            RELAX / CorRELAX; ``None``: the logits are the representation.
        chunk_size: how many masked images go through the network at once (masks per chunk = chunk_size // B).
            On a CUDA out-of-memory error the chunk is halved and retried.
        amp: autocast on CUDA (bfloat16 where supported, else float16); features are compared in float32.
        fill: the value a masked-out pixel takes (0: the zeroed background of the preprocessing).

    Example:
        engine = MaskedForward(net, representation_layer="pool", chunk_size=512)
        masks = RandomMasks(1000, images.shape[2:], device=images.device)
        for chunk in engine(images, masks):
            importance += torch.einsum("bn,nhw->bhw", chunk.logits[..., 1], chunk.masks)
    """

    def __init__(
        self,
        nn_module: nn.Module,
        representation_layer: str | None = None,
        chunk_size: int = 256,
        amp: bool = True,
        fill: float = 0.0,
    ) -> None:
        if chunk_size < 1:
            raise MammoXAIError("saliency chunk_size", f"{chunk_size} is not a positive number of images")
        self.nn_module = nn_module
        self.representation_layer = representation_layer
        self._layer = (
            None
            if representation_layer is None
            else find_layer(nn_module, representation_layer, "representation_layer")
        )
        self.chunk_size = int(chunk_size)
        self.amp = amp
        self.fill = float(fill)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 ``(features (B, D), logits (B, C))`` of the images as they are."""
        return self._forward(x)

    def __call__(self, x: torch.Tensor, masks: MaskSource) -> Iterator[MaskedChunk]:
        """Yield the masked passes of the batch ``x`` (B, channels, H, W) for every mask of ``masks``, in order."""
        start, total, batch = 0, len(masks), x.shape[0]
        while start < total:
            stop = min(total, start + max(1, self.chunk_size // batch))
            chunk = masks(start, stop)
            masked = x[:, None] * chunk[None, :, None] + self.fill * (1.0 - chunk[None, :, None])
            try:
                features, logits = self._forward(masked.reshape(-1, *x.shape[1:]))
            except torch.cuda.OutOfMemoryError:
                if self.chunk_size <= batch:
                    raise
                self.chunk_size //= 2
                logger.warning("out of GPU memory: masked passes continue in chunks of %d images", self.chunk_size)
                del masked
                torch.cuda.empty_cache()
                continue
            n = stop - start
            yield MaskedChunk(start, chunk, features.reshape(batch, n, -1), logits.reshape(batch, n, -1))
            start = stop

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = None
        if self._layer is not None:
            handle = self._layer.register_forward_hook(lambda _module, _input, output: captured.append(output))
        device_type = images.device.type
        dtype = torch.bfloat16 if device_type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
        autocast = torch.autocast(device_type, dtype=dtype, enabled=self.amp and device_type == "cuda")
        try:
            with eval_mode(self.nn_module), autocast:
                logits = self.nn_module(images)
        finally:
            if handle is not None:
                handle.remove()
        logits = logits.float()
        return (captured[-1].flatten(1).float() if captured else logits), logits
