"""`python -m classifier.cli ...`, the same as `python -m classifier ...`."""

import sys

from classifier.cli import main

sys.exit(main())
