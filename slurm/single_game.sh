#!/usr/bin/env bash
# R2D2 on one Atari game as one SLURM job, preemptible and self-resuming.
#
#   sbatch slurm/single_game.sh MsPacman            # or R2D2_GAME=MsPacman
#   sbatch --ntasks=16 slurm/single_game.sh Pong    # more ranks (more actors)
#
# Ranks: --ntasks MPI ranks = topology.learners + topology.replay_shards
# learner/replay ranks + the rest as actors (configs/atari57.yaml: 1 + 4 + actors).
#
# GPU: the job asks for one GPU (--gres=gpu:1, below) for the learner, rank 0,
# which takes it (learner.device=auto picks CUDA when one is visible). The log
# says which device the learner got (the plan's "learner device ..." line).
# CPU only: sbatch --gres=none ...; a GPU type where the site names them:
# sbatch --gres=gpu:a100:1 ... (scontrol show node lists each node's Gres=).
# --gres counts per node: for a game over several nodes see the README
# (SLURM, "Several nodes"): learner and shards on the GPU node, actors anywhere.
#
# Preemption and resume: SLURM sends SIGUSR1 to this batch shell 120 s before
# the time limit (--signal=B:USR1@120), or scancel --signal=USR1 --batch JOB
# does. The trap below forwards SIGUSR1 to the job step; the job writes one
# coordinated checkpoint and every rank exits with code 3 ("checkpointed,
# requeue me", r2d2_hpc.checkpoint.preemption.EXIT_REQUEUE). This script then runs
# `scontrol requeue` on its own job (the array form JOBID_TASKID for array
# tasks), and the requeued job starts r2d2-train with the same run directory,
# which resumes from the newest complete checkpoint there (each incomplete or
# corrupt one is reported and skipped). Output is appended (--open-mode=append)
# to one log per job across requeues. If the step has not exited
# R2D2_CHECKPOINT_GRACE seconds after the signal, the job is requeued anyway
# and resumes from the last periodic checkpoint.
#
# Exit codes of the step: 0 done -> exit 0; 3 checkpointed -> requeue; 2 bad
# input (config, ranks, incompatible checkpoint) -> exit 2, no requeue; 4 the
# checkpoint the stop asked for could not be written (a full disk) -> exit 4,
# no requeue (it would fail again);
# anything else -> requeue if a signal had arrived (resume from the last
# complete checkpoint), else exit with that code.
#
# Environment (all optional):
#   R2D2_GAME             game (default: first argument, else Pong); see
#                         python -m r2d2_hpc.envs.games --list
#   R2D2_HOME             repository root holding configs/ (default: the
#                         submission directory, $SLURM_SUBMIT_DIR)
#   R2D2_RUN_DIR          run directory (default: $R2D2_RUN_ROOT/atari-$GAME)
#   R2D2_RUN_ROOT         parent of run directories (default: $R2D2_HOME/runs)
#   R2D2_CONFIG           config file (default: $R2D2_HOME/configs/atari57.yaml)
#   R2D2_ARGS             replaces the default config arguments
#                         (--config $R2D2_CONFIG --set env.game=$GAME) with
#                         these whitespace-separated r2d2-train arguments,
#                         e.g. "--set env.name=counter --set learner.max_steps=50"
#   R2D2_EXTRA_ARGS       appended to the r2d2-train arguments (with or without R2D2_ARGS)
#   R2D2_LAUNCHER         srun (default) | mpiexec
#   R2D2_SRUN_MPI         srun --mpi= plugin (default pmi2; the MPICH wheel speaks PMI-2)
#   R2D2_MPIEXEC          the mpiexec to use with R2D2_LAUNCHER=mpiexec (default: mpiexec)
#   R2D2_NTASKS           MPI ranks (default $SLURM_NTASKS)
#   R2D2_PYTHON           python with r2d2_hpc installed (default: python3)
#   R2D2_CHECKPOINT_GRACE seconds to wait for the checkpoint after a signal (default 110)
#   R2D2_MAX_RESTARTS     stop requeueing after this many restarts (default 100)
#
#SBATCH --job-name=r2d2
#SBATCH --ntasks=8
#SBATCH --cpus-per-task=1
#SBATCH --gres=gpu:1
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-r2d2-%j.out

set -uo pipefail

EXIT_BAD_INPUT=2
EXIT_REQUEUE=3
EXIT_CHECKPOINT_FAILED=4

GAME="${R2D2_GAME:-${1:-Pong}}"
R2D2_HOME="${R2D2_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
RUN_ROOT="${R2D2_RUN_ROOT:-$R2D2_HOME/runs}"
RUN_DIR="${R2D2_RUN_DIR:-$RUN_ROOT/atari-$GAME}"
CONFIG="${R2D2_CONFIG:-$R2D2_HOME/configs/atari57.yaml}"
PYTHON="${R2D2_PYTHON:-python3}"
LAUNCHER="${R2D2_LAUNCHER:-srun}"
NTASKS="${R2D2_NTASKS:-${SLURM_NTASKS:-1}}"
GRACE="${R2D2_CHECKPOINT_GRACE:-110}"
MAX_RESTARTS="${R2D2_MAX_RESTARTS:-100}"
RESTARTS="${SLURM_RESTART_COUNT:-0}"

if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    JOB_REF="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
else
    JOB_REF="${SLURM_JOB_ID:-}"
fi

log() { echo "[r2d2-slurm $(date '+%F %T')] job ${JOB_REF:-?} ($GAME): $*"; }

cd "$R2D2_HOME" || { log "cannot cd to R2D2_HOME=$R2D2_HOME"; exit "$EXIT_BAD_INPUT"; }
mkdir -p "$RUN_DIR" || { log "cannot create run directory $RUN_DIR"; exit "$EXIT_BAD_INPUT"; }

if [ -n "${R2D2_ARGS:-}" ]; then
    read -r -a TRAIN_ARGS <<< "$R2D2_ARGS"
else
    TRAIN_ARGS=(--config "$CONFIG" --set "env.game=$GAME")
fi
if [ -n "${R2D2_EXTRA_ARGS:-}" ]; then
    read -r -a EXTRA <<< "$R2D2_EXTRA_ARGS"
    TRAIN_ARGS+=("${EXTRA[@]}")
fi
TRAIN=("$PYTHON" -m r2d2_hpc.cli --run-dir "$RUN_DIR" "${TRAIN_ARGS[@]}")

case "$LAUNCHER" in
    srun)    CMD=(srun --mpi="${R2D2_SRUN_MPI:-pmi2}" --kill-on-bad-exit=1 -n "$NTASKS" "${TRAIN[@]}") ;;
    mpiexec) CMD=("${R2D2_MPIEXEC:-mpiexec}" -n "$NTASKS" "${TRAIN[@]}") ;;
    *)       log "R2D2_LAUNCHER must be srun or mpiexec, got '$LAUNCHER'"; exit "$EXIT_BAD_INPUT" ;;
esac

if compgen -G "$RUN_DIR/checkpoints/ckpt-*" > /dev/null; then
    log "restart $RESTARTS: $RUN_DIR holds checkpoints; r2d2-train resumes from the newest valid one"
else
    log "restart $RESTARTS: fresh start in $RUN_DIR"
fi

requeue() {
    if [ "$RESTARTS" -ge "$MAX_RESTARTS" ]; then
        log "already restarted $RESTARTS times (R2D2_MAX_RESTARTS=$MAX_RESTARTS); not requeueing"
        exit "$EXIT_REQUEUE"
    fi
    log "requeueing $JOB_REF: $1"
    if scontrol requeue "$JOB_REF"; then
        exit 0
    fi
    log "scontrol requeue $JOB_REF failed; resubmit this script to resume"
    exit "$EXIT_REQUEUE"
}

STEP_PID=""
SIGNALLED_AT=""
on_signal() {
    log "received SIG$1; asking the job step for a checkpoint (SIGUSR1)"
    [ -z "$SIGNALLED_AT" ] && SIGNALLED_AT=$(date +%s)
    [ -n "$STEP_PID" ] && kill -s USR1 "$STEP_PID" 2>/dev/null
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

log "GPUs of this job: ${SLURM_JOB_GPUS:-none} (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}); the learner's device is in the plan below"
log "launching: ${CMD[*]}"
"${CMD[@]}" &
STEP_PID=$!
[ -n "$SIGNALLED_AT" ] && kill -s USR1 "$STEP_PID" 2>/dev/null  # signalled while launching

# `wait` returns early whenever a trapped signal arrives: poll until the step exits.
while kill -0 "$STEP_PID" 2>/dev/null; do
    if [ -n "$SIGNALLED_AT" ] && [ $(( $(date +%s) - SIGNALLED_AT )) -ge "$GRACE" ]; then
        log "the step did not exit within $GRACE s of the signal"
        requeue "resuming from the last complete checkpoint"
    fi
    sleep 1 &
    wait $! 2>/dev/null
done
wait "$STEP_PID"
RC=$?
log "job step exited with code $RC"

case "$RC" in
    0) exit 0 ;;
    "$EXIT_REQUEUE") requeue "checkpoint written" ;;
    "$EXIT_BAD_INPUT") log "bad input: see the message above; not requeueing"; exit "$RC" ;;
    "$EXIT_CHECKPOINT_FAILED") log "the checkpoint could not be written (see above); not requeueing: make room, then resubmit"; exit "$RC" ;;
    *) if [ -n "$SIGNALLED_AT" ]; then
           requeue "interrupted after the signal (exit $RC); resuming from the last complete checkpoint"
       fi
       log "failed; not requeueing (fix and resubmit: the run resumes from its checkpoints)"
       exit "$RC" ;;
esac
