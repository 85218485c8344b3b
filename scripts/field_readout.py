#!/usr/bin/env python
"""How much of a header field a hand-made noise and intensity readout recovers, at native scale and on the model grid.

Tells whether the preprocessing (intensity scaling, breast crop and resize onto the model grid) leaves a field
readable before any network is trained; ``--intensity_scaling display_range`` reads it out under that scaling
(default ``breast_percentiles``, pretrain.json's). Example::

    python scripts/field_readout.py --dataset_dir synth300 --field thickness --output_dir eval/field_readout

Writes ``report.json`` and ``report.md`` into ``output_dir``.
"""

import sys

from mammoxai.training.field_readout import main

if __name__ == "__main__":
    sys.exit(main())
