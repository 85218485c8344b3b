"""A small whole-image classifier for one-channel mammograms.

The network is the all-convolutional pattern of whole-image mammogram classifiers (Shen et al., "Deep Learning
to Improve Breast Cancer Detection on Screening Mammography", Sci Rep 2019): convolutional blocks, global average
pooling and one linear layer, so that the last block's feature map is spatially aligned with the input and is
the natural target of class activation maps (Grad-CAM: Selvaraju et al., ICCV 2017).

It is deliberately small (about 0.15 M parameters, 0.16 GMAC at 256 x 208) so the bundle trains on a CPU in
minutes; a stronger backbone replaces it in later issues through ``network_def`` alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MammoClassifier"]


class MammoClassifier(nn.Module):
    """Convolutional blocks → global average pooling → dropout → linear class logits.

    Layer names are stable so saliency methods can name their target in a config: ``features.stem``,
    ``features.block1`` … ``features.block<N>`` (the last block keeps its resolution and is the default
    Grad-CAM target), ``pool``, ``dropout``, ``fc``.

    Args:
        in_channels: image channels (1 for a mammogram).
        num_classes: number of output logits.
        channels: output channels of the stem and of each block; the stem halves the resolution with a stride,
            every block but the last halves it again with max pooling, so the last feature map is
            ``input / 2 ** (len(channels) - 1)``.
        dropout: dropout probability before the linear layer.

    Example:
        net = MammoClassifier(num_classes=3)
        logits = net(torch.rand(2, 1, 256, 208))  # (2, 3); net.features.block4 output is (2, 64, 16, 13)
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        channels: Sequence[int] = (8, 16, 32, 64, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels needs the stem and at least one block, got {list(channels)}")
        stem = _conv_bn_relu(in_channels, channels[0], kernel_size=5, stride=2)
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
        blocks = list(zip(channels[:-1], channels[1:], strict=True))
        for index, (block_in, block_out) in enumerate(blocks, start=1):
            block = [_conv_bn_relu(block_in, block_out), _conv_bn_relu(block_out, block_out)]
            if index < len(blocks):
                block.append(nn.MaxPool2d(2))
            layers[f"block{index}"] = nn.Sequential(*block)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], num_classes)

    # TorchScript (the model zoo's export of a network with this backbone) would compile it, and cannot
    __jit_unused_properties__ = ["last_block"]

    @property
    def last_block(self) -> str:
        """Name of the last convolutional block, the usual Grad-CAM target."""
        name, _ = list(self.features.named_children())[-1]
        return f"features.{name}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return self.fc(self.dropout(torch.flatten(self.pool(features), 1)))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    # not in-place: Grad-CAM captures block outputs, and an in-place ReLU after them would overwrite the capture
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )
