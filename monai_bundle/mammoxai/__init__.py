"""MammoXAI: explainable mammography AI shipped as a MONAI bundle.

Not for clinical use: any weights trained by this project are trained on synthetic phantoms.
"""

from mammoxai.errors import MammoXAIError

__version__ = "0.1.0"

__all__ = ["MammoXAIError", "__version__"]
