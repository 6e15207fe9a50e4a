#!/usr/bin/env bash
# Runs the whole test suite: plain pytest tests, then the MPI tests under
# mpiexec (pytest-mpi's --with-mpi). Extra arguments go to the first pytest.
# MPIEXEC overrides the launcher (e.g. MPIEXEC="srun --mpi=pmi2").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
# Open MPI needs --oversubscribe for more ranks than cores (and
# --allow-run-as-root as root); benchmarks/_common.py's mpiexec_cmd decides.
MPIEXEC="${MPIEXEC:-$("$PY" -c 'from benchmarks._common import mpiexec_cmd; print(" ".join(mpiexec_cmd()))')}"
NP="${R2D2_TEST_NP:-4}"
echo "== plain tests =="
# Horovod is optional (scripts/install_horovod.sh): its tests are deselected
# here and run by `python -m pytest -m horovod tests/integration/test_allreduce_mpi.py`.
"$PY" -m pytest -m "not mpi and not horovod" "$@"
echo "== MPI tests: $MPIEXEC -n $NP =="
$MPIEXEC -n "$NP" "$PY" -m pytest --with-mpi -m mpi -q -p no:cacheprovider tests
