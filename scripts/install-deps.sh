#!/usr/bin/env bash
# scripts/install-deps.sh — installs every Debian package loom needs; a no-op when all are present.
set -euo pipefail

packages=(
    make gcc pkg-config
    openmpi-bin libopenmpi-dev        # MPI (mpicc, mpirun)
    libopenblas-openmp-dev            # sgemm, OpenMP-threaded so it nests inside our parallel loops
    libinih-dev                       # INI config files
    libzstd-dev                       # token shard frames
    libxxhash-dev                     # shard checksums
    libpcre2-dev                      # Unicode classes for BPE pre-tokenization
    libcjson-dev                      # tokenizer.json, JSONL input
    libhdf5-openmpi-dev               # checkpoints: parallel HDF5 over MPI-IO
    hdf5-tools                        # h5dump, for the checkpoint tests
    bible-kjv                         # public-domain English text for `make demo`
    clang libclang-rt-14-dev          # `make fuzz`: clang 14 with libFuzzer and the sanitizer runtimes
    libomp-14-dev llvm-14             # OpenMP for clang; llvm-symbolizer for the fuzzers' stack traces
)

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
