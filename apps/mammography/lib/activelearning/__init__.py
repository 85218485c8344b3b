from .uncertainty import UncertaintyStrategy

__all__ = ["UncertaintyStrategy"]
