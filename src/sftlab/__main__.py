"""`python -m sftlab` runs the CLI as the `sftlab` console script does: `sftlab train` and the demos move onto
jemalloc first where train.allocator says so (`sftlab.cli.console`). The board starts its runs this way."""

import sys

from sftlab.cli import console

sys.exit(console(("-P", "-m", "sftlab") if sys.flags.safe_path else ("-m", "sftlab")))
