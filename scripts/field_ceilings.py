#!/usr/bin/env python
"""The Bayes ceilings of the header fields the synthetic generator keeps out of the pixels.

Compression force and age are never drawn into a synthetic image, so no pretrained backbone can predict them
better than the Bayes rule measured here; kVp is given from the exposure control's inputs. Use the same
``--patients`` and ``--seed`` as the study set. Example::

    python scripts/field_ceilings.py --patients 300 --seed 0 --output_dir eval/field_ceilings

Writes ``report.json`` and ``report.md`` into ``output_dir``.
"""

import sys

from mammoxai.data.synth.ceilings import main

if __name__ == "__main__":
    sys.exit(main())
