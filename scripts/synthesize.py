#!/usr/bin/env python
"""Write a synthetic screening cohort (DICOM, manifest.csv, finding_annotations.csv, masks/).

The same as ``python -m mammoxai.data.synth`` and ``mammoxai-synth``; see ``--help``. Example::

    python scripts/synthesize.py --out synth --patients 100 --seed 0 --size 1024 --workers 2
"""

import sys

from mammoxai.data.synth import main

if __name__ == "__main__":
    sys.exit(main())
