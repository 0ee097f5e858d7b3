#!/usr/bin/env bash
# Make the pytorch-ts 0.6.0 reference environment for the twin harness (issue 26), OUTSIDE the repository and never
# in the project's venv:
#
#     bash benchmarks/reference/twins/setup_pytorchts.sh /work/refenv/pts
#
# pytorch-ts 0.6.0 needs gluonts 0.9.x (0.9.10 here), numpy 1.23.5 (its test-split grouper fails on newer numpy),
# pandas<2, pydantic<2, setuptools<60 (gluonts 0.9 imports pkg_resources APIs removed later), scipy 1.11.4.
# pytorchts itself goes in with --no-deps: its pinned requirements would pull another torch. torch==2.13.0 is the
# local CPU wheel (an unpinned torch would pull the CUDA build).
set -euo pipefail
VENV=${1:-/work/refenv/pts}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q 'setuptools<60' wheel
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q gluonts==0.9.10 numpy==1.23.5 scipy==1.11.4 'pandas<2' 'pydantic<2' \
    holidays tqdm matplotlib toolz
# torch pulls a new setuptools; gluonts 0.9 needs the old one back
"$VENV/bin/pip" install -q 'setuptools<60'
"$VENV/bin/pip" install -q --no-deps pytorchts==0.6.0
"$VENV/bin/python" - <<'PY'
import gluonts, numpy, pandas, torch, pts
from pts.model.time_grad import TimeGradEstimator
print("ok: gluonts", gluonts.__version__, "numpy", numpy.__version__, "pandas", pandas.__version__,
      "torch", torch.__version__)
PY
