"""`python -m sftlab` runs the CLI."""

import sys

from sftlab.cli import main

sys.exit(main())
