"""``python -m tsdiffusion.benchmark ...`` (same as ``tsdiffusion benchmark ...``)."""

import sys

from tsdiffusion.benchmark import main

sys.exit(main())
