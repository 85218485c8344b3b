"""``scripts/simulate_clinician.py`` loaded once, as the module ``simulate_clinician``, for the loop's tests.

The script is not a package module; the tests that run the active-learning loop (local folder, PACS) share its
server launcher, bundle maker and training poll instead of each keeping a copy.
"""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("simulate_clinician", REPO / "scripts" / "simulate_clinician.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


simulator = sys.modules.get("simulate_clinician") or _load()
