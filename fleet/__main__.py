"""`python -m fleet`."""

import sys

from fleet.cli import main

sys.exit(main())
