"""``python -m tsdiffusion.benchmark ...`` (same as ``tsdiffusion benchmark ...``)."""

import sys

from tsdiffusion.benchmark import main
from tsdiffusion.errors import run_cli

sys.exit(run_cli(main))
