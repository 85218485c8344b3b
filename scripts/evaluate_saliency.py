#!/usr/bin/env python
"""Score saliency methods on studies with lesion annotations: pointing game per finding class and CorRELAX's
aggregate, energy pointing game, deletion / insertion AUC, model-randomisation check, against the centre and
random-point baselines.

Runs the bundle's ``configs/evaluate_saliency.json`` from any folder; every key can be overridden with
``--key value``. Example (a whole-image classifier from ``configs/train.json`` and a lesion-crop classifier from
``configs/train_lesion_crops.json`` in ``models/``)::

    python scripts/evaluate_saliency.py --dataset_dir synth --select '["gradcam", "correlax prediction"]' \\
        --evaluation_dir eval/saliency

Writes ``report.json``, ``report.md`` and ``overlay_<n>.png`` into ``evaluation_dir``.
"""

import sys

from mammoxai.saliency.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
