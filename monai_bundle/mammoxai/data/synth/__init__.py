"""Synthetic screening mammography: real DICOM studies of phantoms with known lesions, for tests and demos.

Patients get four views (L/R x CC/MLO) per study, some a prior study, on one of several simulated X-ray systems
that differ the way vendors do; breasts have per-patient anatomy shared by all their views and studies; lesions
carry the case label through their morphology and come with boxes and masks.

Example:
    from mammoxai.data.synth import synthesize
    manifest_csv = synthesize("synth", patients=20, seed=0, size=512)

From the command line::

    python -m mammoxai.data.synth --out synth --patients 100 --seed 0 --size 1024 --workers 2
"""

from mammoxai.data.synth.cli import main
from mammoxai.data.synth.generate import FINDING_COLUMNS, synthesize
from mammoxai.data.synth.vendors import SYSTEMS, XraySystem

__all__ = ["FINDING_COLUMNS", "SYSTEMS", "XraySystem", "main", "synthesize"]
