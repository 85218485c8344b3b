from .uncertainty import MEASURES, UncertaintyScoring, uncertainty

__all__ = ["MEASURES", "UncertaintyScoring", "uncertainty"]
