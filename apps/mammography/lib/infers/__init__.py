from .classification import MammogramClassification, load_predictor

__all__ = ["MammogramClassification", "load_predictor"]
