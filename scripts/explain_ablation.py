#!/usr/bin/env python
"""Explain a downstream classifier on the frozen pretrained representation by ablating each task's part of it.

Runs the bundle's ``configs/ablation.json`` (like ``python -m monai.bundle run`` from the bundle root) from any
folder; every key of the config can be overridden with ``--key value``. Example::

    python scripts/explain_ablation.py --dataset_dir synth --target xray_system --output_dir eval/ablation

Writes ``report.json``, ``report.md`` and ``ablation_effects.png`` into ``output_dir``, and the fitted probe with
the task means to ``explainer`` (default ``models/ablation_explainer.pt``) for per-image explanations.
"""

import sys

from mammoxai.saliency.ablation import main

if __name__ == "__main__":
    sys.exit(main())
