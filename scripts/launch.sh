#!/usr/bin/env bash
# scripts/launch.sh — start N ranks of a command with the right launcher for this machine.
#
#   scripts/launch.sh -np N ./loom train -c CONFIG [--section.key=value ...]
#
# Under Slurm (SLURM_JOB_ID set and srun present) it runs `srun -n N`. Otherwise `mpirun -np N`: each
# rank bound to its share of the cores with that many OpenMP threads, or, with more ranks than cores,
# --oversubscribe with one thread per rank and idle ranks yielding; --allow-run-as-root when root.
set -euo pipefail
if [ "${1:-}" != "-np" ] || [ -z "${2:-}" ]; then
    echo "usage: scripts/launch.sh -np N COMMAND [ARGS...]" >&2
    exit 2
fi
np=$2
shift 2
if [ -n "${SLURM_JOB_ID:-}" ] && command -v srun >/dev/null; then
    exec srun -n "$np" "$@"
fi
cores=$(nproc)
flags=(-np "$np")
if [ "$np" -le "$cores" ]; then
    # each rank pinned to its own share of the cores, with one OpenMP thread per core
    per=$((cores / np))
    flags+=(--map-by "slot:PE=$per" --bind-to core)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$per}
else
    # more ranks than cores (tests): one thread each, and waiting ranks yield the core
    flags+=(--oversubscribe --bind-to none --mca mpi_yield_when_idle 1)
    export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
fi
flags+=(-x OMP_NUM_THREADS)
[ -n "${OMP_WAIT_POLICY:-}" ] && flags+=(-x OMP_WAIT_POLICY)
if [ "$(id -u)" -eq 0 ]; then
    flags+=(--allow-run-as-root)
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
exec mpirun "${flags[@]}" "$@"
