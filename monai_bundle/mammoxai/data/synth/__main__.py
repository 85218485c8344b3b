import sys

from mammoxai.data.synth.cli import main

sys.exit(main())
