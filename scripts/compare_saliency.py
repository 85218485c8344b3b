#!/usr/bin/env python
"""Compare the pointing game of two saliency maps finding by finding: two methods of one saliency evaluation, or
one method in two evaluations (e.g. CorRELAX's ``fast`` and ``faithful`` presets), with a paired patient-bootstrap
interval of the difference read against a margin.

Example::

    python scripts/compare_saliency.py --reports fast/saliency_evaluation/report.json \\
        faithful/saliency_evaluation/report.json --methods "correlax prediction" --margin 0.02 --out fast_vs_faithful

Writes ``report.json`` and ``report.md`` into ``--out``, naming the pointing game's tolerance. Two evaluations
scored with different tolerances (``--tolerance`` / ``--tolerance_unit``) are refused: a tolerance adds hits the
maps did not earn.
"""

import sys

from mammoxai.saliency.comparison import main

if __name__ == "__main__":
    sys.exit(main())
