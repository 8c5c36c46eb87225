"""`python -m ingestor` runs the ingestor service (same as `streamops ingestor`)."""

import sys

from streamops.cli import main

sys.exit(main(["ingestor"]))
