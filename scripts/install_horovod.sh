#!/usr/bin/env bash
# Builds and installs Horovod (PyTorch + MPI, CPU operations over MPI) against
# the torch and the MPI already installed in the current Python environment.
#
# Why a script: Horovod 0.28.1, the last release, does not build against
# torch >= 2.1 as released: its CMake files force C++14 while torch's headers
# need C++17 (upstream PR horovod/horovod#3998, unreleased). This script
# downloads the sdist with pip, sets CMAKE_CXX_STANDARD 17 in CMakeLists.txt
# and horovod/torch/CMakeLists.txt, and builds it with
# `pip install --no-build-isolation` so that it compiles against *this*
# torch (an isolated build would fetch another torch and break the ABI).
#
# Usage (in the venv that has torch and mpi4py; r2d2_hpc's [mpich] extra
# supplies mpicc/mpicxx if the machine has no system MPI):
#
#     bash scripts/install_horovod.sh            # idempotent: a no-op when
#                                                # horovod.torch with MPI imports
#     PYTHON=/path/to/python bash scripts/install_horovod.sh
#     HOROVOD_FORCE=1 bash scripts/install_horovod.sh   # rebuild anyway
#
# Environment: PYTHON (default: python), HOROVOD_VERSION (default 0.28.1),
# HOROVOD_BUILD_DIR (default: a temporary directory, removed afterwards),
# MAKEFLAGS (default: -j<cores>; Horovod's own default is -j8, too many
# compilers for a small machine: each torch translation unit takes ~1 GB).
# Takes about 12 minutes on 2 cores. Exits non-zero, loudly, if the build or
# the final check (an MPI-built horovod.torch that allreduces) fails.
set -euo pipefail

PY="${PYTHON:-python}"
VERSION="${HOROVOD_VERSION:-0.28.1}"

check() {
    # An MPI-enabled horovod.torch built against the torch that imports here.
    "$PY" - <<'EOF'
import torch
import horovod
import horovod.torch as hvd
assert hvd.mpi_built(), "horovod was built without MPI"
hvd.init()
x = torch.arange(4, dtype=torch.float32)
hvd.allreduce_(x, op=hvd.Sum)
assert x.tolist() == [0.0, 1.0, 2.0, 3.0], x
print(f"horovod {horovod.__version__} ok: "
      f"MPI built, torch {torch.__version__}")
hvd.shutdown()
EOF
}

if [ -z "${HOROVOD_FORCE:-}" ] && check >/dev/null 2>&1; then
    echo "install_horovod: horovod.torch with MPI already works in $("$PY" -c 'import sys; print(sys.prefix)'); nothing to do"
    check
    exit 0
fi

# mpicc/mpicxx of the MPICH wheel live next to the interpreter.
BIN="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
export PATH="$BIN:$PATH"
command -v mpicxx >/dev/null || command -v mpic++ >/dev/null || {
    echo "install_horovod: no mpicxx on PATH; install an MPI (e.g. pip install -e '.[mpich]')" >&2
    exit 1
}
"$PY" -c 'import torch' || { echo "install_horovod: torch is not importable with $PY" >&2; exit 1; }
command -v cmake >/dev/null || "$PY" -m pip install "cmake>=3.13"

WORK="${HOROVOD_BUILD_DIR:-}"
CLEANUP=""
if [ -z "$WORK" ]; then
    WORK="$(mktemp -d)"
    CLEANUP="$WORK"
fi
trap '[ -n "$CLEANUP" ] && rm -rf "$CLEANUP"' EXIT
mkdir -p "$WORK"
cd "$WORK"

SRC="horovod-$VERSION"
if [ ! -f "$SRC.tar.gz" ]; then
    "$PY" -m pip download --no-deps --no-binary :all: "horovod==$VERSION" -d .
fi
rm -rf "$SRC"
tar xzf "$SRC.tar.gz"

# The patch: C++17 wherever the sdist asks for C++14.
for f in "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"; do
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$f"
    if grep -q 'CMAKE_CXX_STANDARD 14' "$f" || ! grep -q 'CMAKE_CXX_STANDARD 17' "$f"; then
        echo "install_horovod: could not patch $f to C++17 (unknown layout for $VERSION)" >&2
        exit 1
    fi
done

# Build dependencies that --no-build-isolation does not fetch by itself.
"$PY" -m pip install "setuptools>=61" wheel packaging cloudpickle psutil pyyaml

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1
export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_GLOO=1
export HOROVOD_CPU_OPERATIONS=MPI
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc 2>/dev/null || echo 2)}"
echo "install_horovod: building horovod $VERSION in $WORK ($MAKEFLAGS) against" \
     "torch $("$PY" -c 'import torch; print(torch.__version__)') and $(command -v mpicxx || command -v mpic++)"
"$PY" -m pip install --no-build-isolation --no-cache-dir --force-reinstall --no-deps "./$SRC"
check
