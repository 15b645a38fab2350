#!/usr/bin/env bash
# tests/cli/test_config_errors.sh — bad input through the real binary: every case must exit 2 with exactly
# one `loom: error: <culprit>: ...` line on stderr (plus at most one `hint:` line and nothing else: no crash
# banner), print nothing on stdout that looks like a run or a resolved config, and leave no run behind.
# Config cases go through both `loom info` and `loom train`; data and run-folder cases through `loom train`.
# Run from the repository root with ./loom built: bash tests/cli/test_config_errors.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom config_errors
ROOT=$PWD

DEBUG=configs/runs/debug.ini
MLA=configs/models/tiny-mla.ini
MHA=configs/models/tiny-mha.ini

# expect_error NAME CULPRIT MUST -- ARGS...
#   runs ./loom ARGS; wants exit status 2, stderr = one line starting `loom: error: CULPRIT` (CULPRIT may be
#   empty), at most one `hint:` line and no other line; MUST (an extended regex, may be empty) found in
#   stderr; stdout without progress, success or resolved-config lines; no metrics.jsonl or config.ini in
#   the run folder $tmp/run-N that train cases are pointed at.
ncase=0
expect_error() {
    local name=$1 culprit=$2 must=$3
    shift 4
    ncase=$((ncase + 1))
    local run="$tmp/run-$ncase"
    local args=("$@")
    [ "${args[0]}" = train ] && args+=("--train.run_dir=$run")
    "$LOOM" "${args[@]}" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    local what
    what="\`loom ${args[*]}\` exit status $rc; stdout: $(head -c 600 "$tmp/out"); stderr: $(head -c 1200 "$tmp/err")"
    local nerr nhint nother errline
    nerr=$(grep -c '^loom: error: ' "$tmp/err")
    nhint=$(grep -c '^hint: ' "$tmp/err")
    nother=$(grep -vc -e '^loom: error: ' -e '^hint: ' "$tmp/err")
    errline=$(grep -m1 '^loom: error: ' "$tmp/err")
    if [ "$rc" -ne 2 ]; then
        fail "$name" "want exit status 2: $what"
    elif [ "$nerr" -ne 1 ] || [ "$nhint" -gt 1 ] || [ "$nother" -ne 0 ]; then
        fail "$name" "want one 'loom: error:' line, at most one 'hint:' line, nothing else ($nerr error, $nhint hint, $nother other lines): $what"
    elif [[ "$errline" != "loom: error: $culprit"* ]]; then
        fail "$name" "error line does not start with 'loom: error: $culprit': $what"
    elif [ -n "$must" ] && ! grep -qE -- "$must" "$tmp/err"; then
        fail "$name" "stderr lacks /$must/: $what"
    elif grep -qE '^step |tok/s|^loom train:|done|# resolved config|# parameters' "$tmp/out"; then
        fail "$name" "stdout claims progress or success: $what"
    elif [ -e "$run/metrics.jsonl" ] || [ -e "$run/config.ini" ]; then
        fail "$name" "a run was started in $run ($(ls "$run")): $what"
    else
        ok "$name"
    fi
}

# both NAME CULPRIT MUST -- ARGS...: the same bad config through `loom info` and `loom train`
both() {
    local name=$1 culprit=$2 must=$3
    shift 4
    expect_error "config_errors/$name/info" "$culprit" "$must" -- info "$@"
    expect_error "config_errors/$name/train" "$culprit" "$must" -- train "$@"
}

# ---------------------------------------------------------------------------------------------------
# unknown keys and sections, bad values, malformed command lines

printf 'include = %s\n[model]\nhiden_size = 64\n' "$ROOT/$DEBUG" >"$tmp/unknown_key.ini"
both unknown_key_file "$tmp/unknown_key.ini" '^hint:.*model\.hidden_size' -- -c "$tmp/unknown_key.ini"
if grep -q '^loom: error: .*hiden_size' "$tmp/err"; then
    ok config_errors/unknown_key_file/names_key
else
    fail config_errors/unknown_key_file/names_key "error line does not name hiden_size: $(cat "$tmp/err")"
fi

printf 'include = %s\n[modle]\nhidden_size = 64\n' "$ROOT/$DEBUG" >"$tmp/unknown_section.ini"
both unknown_section_file "$tmp/unknown_section.ini" '^loom: error: .*modle.*' -- -c "$tmp/unknown_section.ini"

printf 'include = %s\n[model]\nhidden_size\n' "$ROOT/$DEBUG" >"$tmp/no_value.ini"
both syntax_no_value "$tmp/no_value.ini" '' -- -c "$tmp/no_value.ini"

printf 'include = %s\n[model\nhidden_size = 64\n' "$ROOT/$DEBUG" >"$tmp/bad_header.ini"
both syntax_bad_header "$tmp/bad_header.ini" '' -- -c "$tmp/bad_header.ini"

both unknown_key_cli "--model.hiden_size=3" '^hint:.*model\.hidden_size' -- -c "$DEBUG" --model.hiden_size=3
both unknown_section_cli "--modle.hidden_size=3" 'modle' -- -c "$DEBUG" --modle.hidden_size=3
both bad_int "--train.steps=abc" 'integer' -- -c "$DEBUG" --train.steps=abc
both bad_suffix "--train.steps=5X" 'integer' -- -c "$DEBUG" --train.steps=5X
both int_overflow "--train.steps=99999999999999999999" '' -- -c "$DEBUG" --train.steps=99999999999999999999
both bad_float "--schedule.lr=fast" '' -- -c "$DEBUG" --schedule.lr=fast
both bad_enum "--model.attention=gqa" 'mla\|mha' -- -c "$DEBUG" --model.attention=gqa
both bad_bool "--model.tie_word_embeddings=maybe" '' -- -c "$DEBUG" --model.tie_word_embeddings=maybe
both malformed_override "--steps=5" '' -- -c "$DEBUG" --steps=5
both no_dashes "model.hidden_size=5" 'unexpected' -- -c "$DEBUG" model.hidden_size=5
both zero_steps "train.steps" '' -- -c "$DEBUG" --train.steps=0

# ---------------------------------------------------------------------------------------------------
# inconsistent values: the message names the key (and the other value involved)

both mha_heads_divide_width "model.num_heads" '^loom: error: .*model\.hidden_size 128' -- \
    -c "$DEBUG" --model.attention=mha --model.num_heads=3
both kv_heads_divide_heads "model.num_kv_heads" '^loom: error: .*model\.num_heads' -- \
    -c "$MHA" --data.kind=random --model.num_kv_heads=3
both mla_odd_rope_dim "model.qk_rope_head_dim" '^loom: error: .*15' -- -c "$DEBUG" --model.qk_rope_head_dim=15
both mla_qk_norm "model.qk_norm" '^loom: error: .*mla' -- -c "$DEBUG" --model.qk_norm=true
both global_batch_multiple "train.global_batch" '^loom: error: .*train\.micro_batch' -- \
    -c "$DEBUG" --train.micro_batch=4 --train.global_batch=6
both min_lr_above_lr "schedule.min_lr" '^loom: error: .*schedule\.lr' -- -c "$DEBUG" --schedule.min_lr=0.01
both anneal_needs_wsd "schedule.anneal" 'wsd' -- -c "$DEBUG" --schedule.anneal=1K:1e-5
both anneal_malformed "schedule.anneal" '1K-1e-5' -- \
    -c "$DEBUG" --schedule.kind=wsd --schedule.anneal_start=1K --schedule.anneal=1K-1e-5
both shards_without_train "data.train" '' -- -c "$MLA"
both seq_len_too_large "train.seq_len" 'larger than the supported' -- -c "$DEBUG" --train.seq_len=4B
both token_counter_overflow "train.steps" 'overflow' -- -c "$DEBUG" --train.global_batch=4B --train.steps=1T

# ---------------------------------------------------------------------------------------------------
# config files and commands

both missing_config "$tmp/nope.ini" '' -- -c "$tmp/nope.ini"
both no_config "" '-c' --
both config_is_folder "$tmp" '' -- -c "$tmp"
printf 'include = %s\ninclude = missing-include.ini\n' "$ROOT/$DEBUG" >"$tmp/include.ini"
both missing_include "$tmp/missing-include.ini" '^hint:.*include\.ini' -- -c "$tmp/include.ini"
printf 'include = cycle-b.ini\n' >"$tmp/cycle-a.ini"
printf 'include = cycle-a.ini\n' >"$tmp/cycle-b.ini"
both include_cycle "$tmp/cycle-" 'cycle' -- -c "$tmp/cycle-a.ini"
expect_error config_errors/unknown_command "frobnicate" '' -- frobnicate -c "$DEBUG"
# train.device = cuda where it cannot be had (no CUDA backend in this build, or no GPU visible)
if ! nvidia-smi -L >/dev/null 2>&1; then
    expect_error config_errors/device_cuda_unavailable "train.device" 'cuda, but (this build has no CUDA backend|no CUDA device is visible)' \
        -- train -c "$DEBUG" --train.device=cuda
fi
# LOOM_COMM (the path of a CUDA run's collectives): neither mpi nor nccl, and nccl for a run on the CPU
LOOM_COMM=shmem expect_error config_errors/loom_comm_unknown "LOOM_COMM" "'shmem' is not a path" -- train -c "$DEBUG"
LOOM_COMM=nccl expect_error config_errors/loom_comm_nccl_on_cpu "LOOM_COMM" "nccl needs the CUDA backend" \
    -- train -c "$DEBUG" --train.device=cpu

# ---------------------------------------------------------------------------------------------------
# training data: missing, empty, corrupt, too large a vocabulary

seq 1 3000 >"$tmp/text.txt"
"$LOOM" data prep --tokenizer bytes --source num --in "$tmp/text.txt" --out "$tmp/good" >"$tmp/out" 2>"$tmp/err"
rc=$?
shard="$tmp/good/num-00000.tok"
if [ "$rc" -ne 0 ] || [ ! -f "$shard" ]; then
    fail config_errors/data_prep "loom data prep exit status $rc, no $shard; stderr: $(cat "$tmp/err")"
else
    ok config_errors/data_prep
    size=$(wc -c <"$shard")
    SH=(-c "$DEBUG" --data.kind=shards)

    expect_error config_errors/data_missing_file "$tmp/nope.tok" '' -- train "${SH[@]}" --data.train="$tmp/nope.tok"
    expect_error config_errors/data_missing_in_list "$tmp/nope2.tok" '' -- \
        train "${SH[@]}" --data.train="$shard,$tmp/nope2.tok"
    mkdir "$tmp/empty"
    expect_error config_errors/data_empty_folder "$tmp/empty" '' -- train "${SH[@]}" --data.train="$tmp/empty"

    # truncated copies: shorter than a header, header only, half, all but the last byte
    for len in 0 40 64 $((size / 2)) $((size - 1)); do
        f="$tmp/trunc-$len.tok"
        head -c "$len" "$shard" >"$f"
        expect_error "config_errors/data_truncated_$len" "$f" '' -- train "${SH[@]}" --data.train="$f"
    done
    # one flipped bit: magic, header fields, frame data, frame index, checksum, end marker
    for pos in 0 12 40 $((size / 2)) $((size - 30)) $((size - 12)) $((size - 1)); do
        f="$tmp/flip-$pos.tok"
        cp "$shard" "$f"
        byte=$(od -An -tu1 -j "$pos" -N1 "$f" | tr -d ' ')
        printf '%b' "$(printf '\\0%03o' $((byte ^ 64)))" | dd of="$f" bs=1 seek="$pos" conv=notrunc status=none
        if cmp -s "$f" "$shard"; then
            fail "config_errors/data_flipped_$pos" "could not flip byte $pos of $f"
            continue
        fi
        expect_error "config_errors/data_flipped_$pos" "$f" '' -- train "${SH[@]}" --data.train="$f"
    done
    # a folder with a good shard and a damaged one: the damaged one is named
    mkdir "$tmp/mixed"
    cp "$shard" "$tmp/mixed/a-00000.tok"
    head -c $((size - 5)) "$shard" >"$tmp/mixed/b-00000.tok"
    expect_error config_errors/data_mixed_folder "$tmp/mixed/b-00000.tok" '' -- train "${SH[@]}" --data.train="$tmp/mixed"

    expect_error config_errors/data_vocab_too_large "$shard" 'model\.vocab_size' -- \
        train "${SH[@]}" --data.train="$shard" --model.vocab_size=200
    if grep -q '259' "$tmp/err"; then
        ok config_errors/data_vocab_too_large/names_vocab
    else
        fail config_errors/data_vocab_too_large/names_vocab "stderr does not name the shard vocabulary 259: $(cat "$tmp/err")"
    fi
fi

# ---------------------------------------------------------------------------------------------------
# a run folder that already holds a run is never overwritten

exist="$tmp/existing"
"$LOOM" train -c "$DEBUG" --train.steps=2 --train.run_dir="$exist" >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -ne 0 ] || [ ! -s "$exist/metrics.jsonl" ]; then
    fail config_errors/existing_run_setup "first run exit status $rc; stdout: $(cat "$tmp/out"); stderr: $(cat "$tmp/err")"
else
    cp "$exist/metrics.jsonl" "$tmp/metrics.before"
    cp "$exist/config.ini" "$tmp/config.before"
    "$LOOM" train -c "$DEBUG" --train.steps=3 --train.seed=7 --train.run_dir="$exist" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    nerr=$(grep -c '^loom: error: ' "$tmp/err")
    if [ "$rc" -eq 2 ] && [ "$nerr" -eq 1 ] && grep -q '^loom: error: train.run_dir' "$tmp/err" &&
        ! grep -qE '^step |tok/s|done' "$tmp/out"; then
        ok config_errors/existing_run
    else
        fail config_errors/existing_run "second run into $exist: exit status $rc (want 2); stdout: $(cat "$tmp/out"); stderr: $(cat "$tmp/err")"
    fi
    if cmp -s "$exist/metrics.jsonl" "$tmp/metrics.before" && cmp -s "$exist/config.ini" "$tmp/config.before"; then
        ok config_errors/existing_run_unchanged
    else
        fail config_errors/existing_run_unchanged "$exist/metrics.jsonl or config.ini changed by the refused run: $(diff "$tmp/config.before" "$exist/config.ini" | head -5)"
    fi
fi

[ "$failures" -eq 0 ]
