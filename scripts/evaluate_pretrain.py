#!/usr/bin/env python
"""Evaluate a metadata-pretrained checkpoint on held-out patients: per-field accuracy, matching, a report.

Runs the bundle's ``configs/evaluate_pretrain.json`` (like ``python -m monai.bundle run`` from the bundle root)
from any folder; every key of the config can be overridden with ``--key value``. Example::

    python scripts/evaluate_pretrain.py --dataset_dir synth --checkpoint monai_bundle/models/pretrained.pt \\
        --output_dir eval/pretrain_evaluation

Writes ``report.json``, ``report.md`` and PNG plots into ``output_dir``. Use the manifest, ``val_fraction`` and
``seed`` of pretraining, so the held-out patients are the ones pretraining held out.
"""

import sys

from mammoxai.training.evaluate_pretrain import main

if __name__ == "__main__":
    sys.exit(main())
