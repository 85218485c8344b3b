#!/usr/bin/env python
"""Evaluate the fine-tuned classifier (or an ensemble) on held-out patients: AUC ± CI, operating points,
per-class AUC, calibration, per-device and exam-level results, as a report.

Runs the bundle's ``configs/train.json`` merged with ``configs/evaluate.json`` (so the network and classes are
the ones training used) from any folder; every key can be overridden with ``--key value``. Example::

    python scripts/evaluate.py --dataset_dir synth --checkpoints '["run1/model.pt", "run2/model.pt"]' \\
        --evaluation_dir eval/classifier

Writes ``report.json``, ``report.md``, ``roc.png`` and ``reliability.png`` into ``evaluation_dir``.
"""

import sys

from mammoxai.training.evaluate_classifier import main

if __name__ == "__main__":
    sys.exit(main())
