"""Networks referenced by the bundle configs (``network_def``)."""

from mammoxai.nets.classifier import MammoClassifier

__all__ = ["MammoClassifier"]
