"""Networks referenced by the bundle configs (``network_def``)."""

from mammoxai.nets.backbones import BACKBONES, build_backbone
from mammoxai.nets.classifier import MammoClassifier
from mammoxai.nets.finetune import BackboneClassifier, MetadataClassifier, MultiViewClassifier
from mammoxai.nets.metadata_net import MetadataNet

__all__ = [
    "BACKBONES",
    "BackboneClassifier",
    "MammoClassifier",
    "MetadataClassifier",
    "MetadataNet",
    "MultiViewClassifier",
    "build_backbone",
]
