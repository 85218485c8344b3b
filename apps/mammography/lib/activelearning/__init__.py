from .baselines import Random, ReadableOnly
from .uncertainty import UncertaintyStrategy

__all__ = ["Random", "ReadableOnly", "UncertaintyStrategy"]
