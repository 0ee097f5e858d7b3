"""``python -m tsdiffusion.cli ...`` (same as ``tsdiffusion ...``; the benchmark runner starts each run so)."""

from tsdiffusion.cli import main

main()
