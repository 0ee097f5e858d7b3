"""The command line, the layer above everything it calls (``tsdiffusion``, ``python -m tsdiffusion.cli``).

- ``tsdiffusion fit | validate | test | predict --config FILE.yaml``: :class:`TSDiffusionCLI`
  (:mod:`tsdiffusion.cli.lightning`, LightningCLI);
- ``tsdiffusion benchmark SPEC.yaml`` / ``tsdiffusion benchmark report DIR``: :mod:`tsdiffusion.cli.benchmark`;
- ``tsdiffusion curve --run DIR``: :mod:`tsdiffusion.cli.curve`.

Nothing below this package imports it (``tests/test_architecture.py``); building and loading models is
:mod:`tsdiffusion.runs`. Each command's module is imported only when it runs, so ``tsdiffusion benchmark``
does not load Lightning.
"""

from __future__ import annotations

import sys
from typing import Any

from tsdiffusion.errors import cli_errors


@cli_errors  # project errors: one line and exit code 2 or 1; `--debug` / TSDIFFUSION_DEBUG=1: the traceback
def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``tsdiffusion benchmark ...`` goes to the runner, the rest to LightningCLI."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "benchmark":
        from tsdiffusion.cli.benchmark import main as benchmark_main

        code = benchmark_main(args[1:])
        if code:  # 1: a run of the sweep is not done
            raise SystemExit(code)
        return
    if args and args[0] == "curve":  # the speed/quality curve of a finished run
        from tsdiffusion.cli.curve import main as curve_main

        curve_main(args[1:])
        return
    from tsdiffusion.cli.lightning import TSDiffusionCLI

    TSDiffusionCLI(args=argv)  # None: LightningCLI reads sys.argv itself


def __getattr__(name: str) -> Any:
    if name == "TSDiffusionCLI":  # imported on use: Lightning loads only for the LightningCLI commands
        from tsdiffusion.cli.lightning import TSDiffusionCLI

        return TSDiffusionCLI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TSDiffusionCLI", "main"]
