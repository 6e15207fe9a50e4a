#!/usr/bin/env bash
# The Atari-57 benchmark as one SLURM array job: task i trains game i.
#
#   sbatch slurm/atari57.sh                      # all 57 games, at most 8 at once
#   sbatch --array=0-56%20 slurm/atari57.sh      # at most 20 games at once
#   sbatch --array=36 slurm/atari57.sh           # only Pong (index 36)
#   sbatch --ntasks=32 slurm/atari57.sh          # 32 MPI ranks per game
#
# Task id -> game: python -m r2d2_hpc.envs.games INDEX (the one list of the
# 57 games, r2d2_hpc/envs/games.py; --list prints them with their indices).
# The %N in --array is SLURM's concurrency cap: at most N array tasks (games)
# run at the same time; the others wait in the queue. Each game gets its own
# run directory, $R2D2_RUN_ROOT/atari57/<Game> (default runs/atari57/<Game>),
# its own log slurm-r2d2-57-<array job>_<task>.out (appended across requeues),
# and resumes there after a preemption or time limit.
#
# Ranks per game: --ntasks (default below: 8 = 1 learner + 4 replay shards +
# 3 actors with configs/atari57.yaml; raise it for more actors).
# GPU: one per game for its learner (--gres=gpu:1 below); CPU only:
# sbatch --gres=none slurm/atari57.sh (more in slurm/single_game.sh).
# Launcher: R2D2_LAUNCHER=srun (default; srun --mpi=$R2D2_SRUN_MPI, pmi2 by
# default) or R2D2_LAUNCHER=mpiexec (R2D2_MPIEXEC, default mpiexec).
# Everything else, including the signal -> checkpoint -> exit 3 -> requeue ->
# resume cycle and the R2D2_* variables (R2D2_ARGS replaces the config
# arguments, e.g. for a tiny test config), is slurm/single_game.sh's, which
# this script becomes once it knows its game (exec keeps the batch shell's
# pid, so SLURM's signal reaches single_game.sh's trap).
#
#SBATCH --job-name=r2d2-57
#SBATCH --array=0-56%8
#SBATCH --ntasks=8
#SBATCH --cpus-per-task=1
#SBATCH --gres=gpu:1
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-r2d2-57-%A_%a.out

set -uo pipefail

R2D2_HOME="${R2D2_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
PYTHON="${R2D2_PYTHON:-python3}"
INDEX="${SLURM_ARRAY_TASK_ID:-${1:-}}"
if [ -z "$INDEX" ]; then
    echo "atari57.sh: not an array task: submit with sbatch --array=... or pass an index" >&2
    exit 2
fi
cd "$R2D2_HOME" || { echo "atari57.sh: cannot cd to R2D2_HOME=$R2D2_HOME" >&2; exit 2; }
GAME="$("$PYTHON" -m r2d2_hpc.envs.games "$INDEX")" || exit 2

export R2D2_HOME R2D2_GAME="$GAME"
export R2D2_RUN_DIR="${R2D2_RUN_ROOT:-$R2D2_HOME/runs}/atari57/$GAME"
exec bash "$R2D2_HOME/slurm/single_game.sh" "$GAME"
