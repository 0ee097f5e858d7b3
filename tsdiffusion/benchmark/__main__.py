"""``python -m tsdiffusion.benchmark ...`` (same as ``tsdiffusion benchmark ...``): an entry-point file, part of
the command-line layer (:mod:`tsdiffusion.cli.benchmark`) though it sits in this package; nothing imports it."""

import sys

from tsdiffusion.cli.benchmark import main
from tsdiffusion.errors import run_cli

sys.exit(run_cli(main))
