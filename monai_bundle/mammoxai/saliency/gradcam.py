"""Class activation maps that stay on the device and explain every image of a batch, for several classes at once.

The family shares one hook and one way of choosing target classes; members differ only in how a target
layer's activations ``A^k`` (and, for the gradient methods, ``G^k = d y^c / d A^k`` with ``y^c`` the class
**logit**) are combined into a map:

- :class:`CAM` — Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016,
  https://arxiv.org/abs/1512.04150: ``sum_k w_k^c A^k`` with ``w^c`` the linear classifier's weights; only for
  networks ending in global average pooling + one linear layer, and needs no backward pass.
- :class:`GradCAM` — Selvaraju et al., Grad-CAM, ICCV 2017, https://arxiv.org/abs/1610.02391:
  ``ReLU(sum_k mean(G^k) A^k)``. For a GAP + linear network ``G^k = w_k^c / (h w)`` everywhere, so Grad-CAM
  equals ReLU(CAM) up to scale (Selvaraju et al., Sec. 3.1).
- :class:`GradCAMPlusPlus` — Chattopadhay et al., Grad-CAM++, WACV 2018, https://arxiv.org/abs/1710.11063:
  pixel-weighted positive gradients, better for several instances of a class (e.g. clustered calcifications).
- :class:`HiResCAM` — Draelos & Carin, Use HiResCAM instead of Grad-CAM for faithful explanations,
  https://arxiv.org/abs/2011.08891: ``ReLU(sum_k G^k * A^k)``, element-wise, so the map shows exactly the
  locations that raise the score.

Every map is upsampled bilinearly to the input size (``align_corners=False``, the continuous-coordinate convention
of :class:`mammoxai.io.geometry.ImageGeometry`) and min-max normalised to [0, 1] per image and per class on the
device, unlike :class:`monai.visualize.GradCAM`, which normalises one image at a time through NumPy; a map that is
constant (no positive evidence anywhere) becomes all zeros. Only positive evidence is kept (ReLU) by every member,
CAM included, so that maps of different members are comparable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from monai.networks import eval_mode
from torch import nn

from mammoxai.errors import MammoXAIError

__all__ = [
    "CAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "ClassIndex",
    "class_indices",
    "find_layer",
    "normalise_maps",
]

ClassIndex = int | Sequence[int] | torch.Tensor | None
"""Which class each map explains: ``None`` (each image's predicted class), an ``int`` (that class for every image),
a 1-D tensor of one class per image, or a sequence of ints (one map per listed class, in that order)."""


def find_layer(nn_module: nn.Module, name: str, setting: str = "target_layer") -> nn.Module:
    """The sub-module called ``name`` in ``nn_module.named_modules()``; a config names layers by these strings."""
    layers = dict(nn_module.named_modules())
    if name not in layers:
        candidates = ", ".join(layer for layer in layers if layer)
        problem = f"the network has no layer named {name!r}"
        raise MammoXAIError(f"saliency {setting}", problem, f"use one of: {candidates}")
    return layers[name]


def class_indices(scores: torch.Tensor, class_idx: ClassIndex) -> list[torch.Tensor]:
    """One (B,) long tensor of class indices per requested map, checked against the number of classes.

    Args:
        scores: logits or probabilities (B, C) of the unmodified images.
        class_idx: see :data:`ClassIndex`; a 0-d tensor counts as an ``int``.

    Raises:
        MammoXAIError: a class index the model does not have, a class name or other non-integer where an index
            belongs, an empty list of classes, or a per-image tensor of the wrong length.
    """
    batch, num_classes = scores.shape
    if class_idx is None:
        return [scores.argmax(dim=1)]
    if isinstance(class_idx, torch.Tensor) and class_idx.ndim > 0:
        per_image = class_idx.to(device=scores.device, dtype=torch.long).reshape(-1)
        if per_image.numel() != batch:
            problem = f"has {per_image.numel()} entries for a batch of {batch} images"
            raise MammoXAIError("saliency class_idx", problem, "give one class index per image")
        indices = per_image.unique().tolist()
        selected = [per_image]
    else:
        several = isinstance(class_idx, Iterable) and not isinstance(class_idx, (str, torch.Tensor))
        listed = list(class_idx) if several else [class_idx]
        if not listed:
            fix = "give at least one class, or None for the predicted one"
            raise MammoXAIError("saliency class_idx", "is an empty list", fix)
        indices = [_class_index(index) for index in listed]
        selected = [torch.full((batch,), index, dtype=torch.long, device=scores.device) for index in indices]
    for index in indices:
        if not 0 <= index < num_classes:
            problem = f"class index {index} is out of range for {num_classes} classes"
            raise MammoXAIError("saliency class_idx", problem, f"use 0 to {num_classes - 1}")
    return selected


def _class_index(value: object) -> int:
    """An integer class index as an ``int``; a name (the config's way of naming classes) or a float is refused
    rather than read letter by letter or truncated."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value)
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    fix = "give the class's position in the model's class names, e.g. class_names.index(name)"
    raise MammoXAIError("saliency class_idx", f"{value!r} is not a class index", fix)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each (image, class) map of (B, K, H, W) to [0, 1] on its device; constant maps become zeros.

    Raises:
        MammoXAIError: a map holds NaN, which min-max scaling would otherwise turn into an all-zero map that looks
            like "no evidence" (it comes from non-finite pixels or logits, e.g. an overflow in float16).
    """
    maps = maps.float()
    if maps.isnan().any():
        problem = "is NaN: the network's output on the image is not finite"
        fix = "check the image for NaN / infinite pixels, and run without mixed precision if the network overflows"
        raise MammoXAIError("saliency map", problem, fix)
    low = maps.amin(dim=(2, 3), keepdim=True)
    span = maps.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


class _ActivationMaps:
    """Hook a target layer, run one forward pass, and combine its activations into one map per requested class.

    Subclasses implement :meth:`_combine`; gradient-free members set ``needs_gradients = False``.
    """

    needs_gradients = True

    def __init__(self, nn_module: nn.Module, target_layer: str) -> None:
        self.nn_module = nn_module
        self.target_layer = target_layer
        self._layer = find_layer(nn_module, target_layer)

    @property
    def settings(self) -> dict[str, str]:
        """What a prediction record stores about how its map was made."""
        return {"target_layer": self.target_layer, "score": "logit"}

    def __call__(self, x: torch.Tensor, class_idx: ClassIndex = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the maps and the logits of one forward pass.

        Args:
            x: input batch (B, channels, H, W) on the network's device.
            class_idx: see :data:`ClassIndex`; ``None`` and per-image tensors give (B, 1, H, W) maps, a sequence
                of ints (B, len, H, W).

        Returns:
            ``(maps, logits)``: float32 maps in [0, 1] on the input's device, and the detached logits (B, C).
        """
        captured: list[torch.Tensor] = []
        handle = self._layer.register_forward_hook(lambda _module, _input, output: captured.append(output))
        try:
            # eval_mode turns gradients off; they are turned back on where the maps need them. A caller's
            # torch.inference_mode() would forbid the backward pass, and its tensors cannot join a graph
            with eval_mode(self.nn_module), torch.inference_mode(False), torch.set_grad_enabled(self.needs_gradients):
                inputs = x.clone() if x.is_inference() else x.detach()
                # the input requires grad so the activations do even when the network's weights are frozen
                logits = self.nn_module(inputs.requires_grad_(self.needs_gradients))
                activations = self._activations(captured)
                targets = class_indices(logits.detach(), class_idx)
                last = len(targets) - 1
                maps = [self._map(activations, logits, target, retain=i < last) for i, target in enumerate(targets)]
        finally:
            handle.remove()
        cams = F.interpolate(torch.stack(maps, dim=1), size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
        return normalise_maps(cams), logits.detach()

    def _activations(self, captured: list) -> torch.Tensor:
        """The target layer's output of the forward pass, checked to be a feature map the maps can be made from."""
        fix = "name a convolutional layer or block the forward pass runs, e.g. the last one before global pooling"
        if not captured:
            raise MammoXAIError("saliency target_layer", f"{self.target_layer!r} did not run in the forward pass", fix)
        activations = captured[-1]
        if not isinstance(activations, torch.Tensor) or activations.ndim != 4:
            shape = tuple(activations.shape) if isinstance(activations, torch.Tensor) else type(activations).__name__
            problem = f"{self.target_layer!r} gives {shape}, not a feature map (B, K, h, w)"
            raise MammoXAIError("saliency target_layer", problem, fix)
        if self.needs_gradients and not activations.requires_grad:
            problem = f"{self.target_layer!r} gives no gradient (it runs without autograd or after a detach)"
            raise MammoXAIError("saliency target_layer", problem, fix)
        return activations

    def _map(self, activations: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, retain: bool) -> torch.Tensor:
        """The (B, h, w) map of each image's ``target`` class."""
        gradients = None
        if self.needs_gradients:
            score = logits.gather(1, target[:, None]).sum()  # images are independent: per-image gradients
            (gradients,) = torch.autograd.grad(score, activations, retain_graph=retain, allow_unused=True)
            if gradients is None:
                problem = f"the logits do not depend on {self.target_layer!r}"
                raise MammoXAIError("saliency target_layer", problem, "name a layer on the path to the logits")
            gradients = gradients.float()
        return F.relu(self._combine(activations.detach().float(), gradients, target))

    def _combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GradCAM(_ActivationMaps):
    """Gradient-weighted class activation maps (Selvaraju et al., ICCV 2017) for a batch of images.

    The target layer is named as in ``nn_module.named_modules()``, so a config can set it as a string. Images
    of a batch are independent (the summed logits of a batch have per-image gradients), so one backward pass
    serves the whole batch; several classes need one backward each, all from a single forward pass.

    Args:
        nn_module: the classifier; it returns logits (B, C). It is run in eval mode and restored afterwards.
        target_layer: name of the layer whose activations (B, K, h, w) are weighted, e.g. ``"features.block4"``.

    Example:
        from mammoxai.nets.classifier import MammoClassifier
        net = MammoClassifier(num_classes=3)
        cam = GradCAM(net, target_layer="features.block4")
        maps, logits = cam(torch.rand(2, 1, 256, 208))                   # (2, 1, 256, 208): predicted class
        maps, logits = cam(torch.rand(2, 1, 256, 208), class_idx=[0, 1, 2])  # (2, 3, 256, 208): every class
    """

    def _combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(dim=1)


class GradCAMPlusPlus(_ActivationMaps):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018): channel weights from pixel-weighted positive gradients.

    With the exponential-score closed form of the paper, ``alpha = G^2 / (2 G^2 + (sum_ab A) G^3)`` (0 where
    ``G = 0``) and ``w_k = sum_ab alpha * ReLU(G)``; the formula of ``pytorch-grad-cam``'s ``GradCAMPlusPlus``,
    evaluated exactly: pytorch-grad-cam adds 1e-6 to the denominator, a guard as large as ``2 G^2`` for the small
    gradients of a freshly initialised network, so the two agree only where gradients are large.

    Args:
        nn_module: the classifier (logits out).
        target_layer: name of the layer whose activations are weighted.

    Example:
        maps, logits = GradCAMPlusPlus(net, "features.block4")(images, class_idx=[1, 2])
    """

    def _combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        squared = gradients.pow(2)
        denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * gradients.pow(3)
        safe = (gradients != 0) & (denominator != 0)
        alpha = torch.where(safe, squared / torch.where(safe, denominator, torch.ones_like(denominator)), 0.0)
        weights = (alpha * F.relu(gradients)).sum(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(dim=1)


class HiResCAM(_ActivationMaps):
    """HiResCAM (Draelos & Carin 2020): the element-wise product of gradients and activations, summed over channels.

    Args:
        nn_module: the classifier (logits out).
        target_layer: name of the layer whose activations are weighted.

    Example:
        maps, logits = HiResCAM(net, "features.block4")(images)
    """

    def _combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        return (gradients * activations).sum(dim=1)


class CAM(_ActivationMaps):
    """Class activation maps (Zhou et al., CVPR 2016) for networks ending in global average pooling + one linear layer.

    The map of class ``c`` weights the target layer's channels with the linear layer's weights ``w^c``, so it needs
    no backward pass. That is the class's logit spread over the map only when the linear layer reads the global
    average pool of the target layer and nothing else: for any other head (the served
    :class:`~mammoxai.nets.MetadataClassifier` reads ``sum_k projection_k(pool(features))``) the same weights give a
    map that means nothing, and a matching channel count does not tell the two apart. So every forward pass checks
    that the linear layer's input equals the target layer's global average pool, and the constructor runs one such
    pass on a ``probe_size`` random image, so that a network CAM does not apply to is refused when the method is
    built (the server then leaves CAM out of the methods it offers), not after a meaningless map.

    Args:
        nn_module: the classifier (logits out).
        target_layer: name of the last convolutional layer (its output is pooled into ``classifier_layer``).
        classifier_layer: name of the ``nn.Linear`` producing the logits (``"fc"`` in
            :class:`~mammoxai.nets.MammoClassifier`).

    Raises:
        MammoXAIError: ``classifier_layer`` is not an ``nn.Linear``, or it does not read the global average pool
            of ``target_layer`` (checked on the probe image at construction and on every image explained).

    Example:
        maps, logits = CAM(net, "features.block4", classifier_layer="fc")(images, class_idx=[0, 1, 2])
    """

    needs_gradients = False
    probe_size = (64, 64)
    """(h, w) of the random image the constructor checks the network's structure on: large enough for every backbone
    of :data:`mammoxai.nets.BACKBONES`, small enough to cost milliseconds."""

    def __init__(self, nn_module: nn.Module, target_layer: str, classifier_layer: str = "fc") -> None:
        super().__init__(nn_module, target_layer)
        linear = find_layer(nn_module, classifier_layer, setting="classifier_layer")
        if not isinstance(linear, nn.Linear):
            problem = f"{classifier_layer!r} is a {type(linear).__name__}, not the linear layer CAM weights come from"
            raise MammoXAIError("saliency classifier_layer", problem, "name the nn.Linear that produces the logits")
        self.classifier_layer = classifier_layer
        self._linear = linear
        self._linear_inputs: list[torch.Tensor] = []
        self._check_on_probe()

    @property
    def settings(self) -> dict[str, str]:
        return {**super().settings, "classifier_layer": self.classifier_layer}

    def __call__(self, x: torch.Tensor, class_idx: ClassIndex = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._linear_inputs.clear()
        handle = self._linear.register_forward_pre_hook(lambda _module, args: self._linear_inputs.append(args[0]))
        try:
            return super().__call__(x, class_idx)
        finally:
            handle.remove()
            self._linear_inputs.clear()

    def _activations(self, captured: list) -> torch.Tensor:
        activations = super()._activations(captured)
        self._check_pooled(activations)
        return activations

    def _check_pooled(self, activations: torch.Tensor) -> None:
        """Refuse a network whose linear layer does not read the global average pool of the target layer.

        Only then is ``logit_c = mean_hw(sum_k w_k^c A^k) + b_c``, which is what makes the CAM of class ``c`` its
        logit's spatial decomposition. Compared in float32 with a tolerance of 1 % of the largest pooled value, which
        mixed precision stays within and a different head (another vector of the same length) does not.
        """
        fix = "use gradcam, which needs no such head, or name the layer pooled straight into the linear layer"
        if not self._linear_inputs:
            problem = f"{self.classifier_layer!r} did not run in the forward pass"
            raise MammoXAIError("saliency classifier_layer", problem, fix)
        pooled = activations.detach().float().mean(dim=(2, 3))
        read = self._linear_inputs[-1].detach().float()
        read = read.reshape(len(read), -1)
        tolerance = 1e-2 * float(pooled.abs().max())
        if read.shape != pooled.shape or not torch.allclose(read, pooled, rtol=0.0, atol=tolerance):
            problem = (
                f"{self.classifier_layer!r} does not read the global average pool of {self.target_layer!r}, "
                "so CAM's weights do not apply to its channels"
            )
            raise MammoXAIError("saliency cam", problem, fix)

    def _check_on_probe(self) -> None:
        """Run the check of :meth:`_check_pooled` on one random ``probe_size`` image, with the network's input
        channels (those of its first convolution) on its device.

        Raises:
            MammoXAIError: the check fails, or the network cannot run on the probe (no convolution to take the
                channels from, a fixed input size): CAM cannot be shown to apply to it.
        """
        convolutions = [module for module in self.nn_module.modules() if isinstance(module, nn.Conv2d)]
        parameter = next(self.nn_module.parameters(), None)
        fix = "use gradcam, which needs no such check"
        if not convolutions or parameter is None:
            raise MammoXAIError("saliency cam", "the network has no convolution to take a class activation map of", fix)
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand((1, convolutions[0].in_channels, *self.probe_size), generator=generator)
        try:
            self(probe.to(device=parameter.device, dtype=parameter.dtype))
        except MammoXAIError:
            raise
        except (RuntimeError, ValueError) as error:
            problem = f"cannot be checked for global average pooling + linear on a {self.probe_size} image ({error})"
            raise MammoXAIError("saliency cam", problem, fix) from error

    def _combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        weights = self._linear.weight.detach().float()[target]  # (B, K)
        return torch.einsum("bk,bkhw->bhw", weights, activations)
