"""The MammoXAI panel's logic in plain Python (standard library only): no Slicer, Qt or VTK import.

- :mod:`.client`: HTTP client for the MammoXAI MONAI Label server.
- :mod:`.prediction`: the prediction record as table rows, QC mismatches and timing.
- :mod:`.geometry`: markups in RAS to original-pixel coordinates; heatmap grid checks.
- :mod:`.corrections`: unsent corrections kept on disk until the server accepts them.
- :mod:`.review`: the review workflow every panel button calls.
"""

from .client import InferResult, MammoXAIClient
from .corrections import PendingCorrection, PendingCorrections
from .errors import MammoXAIClientError
from .geometry import box_lesion, check_heatmap, ijk_to_ras, point_lesion, ras_to_pixel, read_nrrd_geometry
from .prediction import PredictionRow, PredictionView, parse_prediction
from .review import BIRADS, STRATEGIES, Case, InferenceOutcome, ReviewSession, ServerInfo, TrainingStatus

__all__ = [
    "BIRADS",
    "STRATEGIES",
    "Case",
    "InferResult",
    "InferenceOutcome",
    "MammoXAIClient",
    "MammoXAIClientError",
    "PendingCorrection",
    "PendingCorrections",
    "PredictionRow",
    "PredictionView",
    "ReviewSession",
    "ServerInfo",
    "TrainingStatus",
    "box_lesion",
    "check_heatmap",
    "ijk_to_ras",
    "parse_prediction",
    "point_lesion",
    "ras_to_pixel",
    "read_nrrd_geometry",
]
