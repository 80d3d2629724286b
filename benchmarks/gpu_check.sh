#!/usr/bin/env bash
# The GPU check (issue 15, item 5; issue 21, item 9): one call on one H100/H200, no network, at most
# 480 s in the worst case (every part at its cap, the install included: --dry-run prints it as
# `worst_case_s=<n>`), one summary table and a calibration file at the end.
#
# Once, on a machine with a package index, from the repository root (fills the git-ignored .whl/,
# about 0.5 MB: Hydra and its pure-Python dependencies, which the GPU machine lacks):
#     bash benchmarks/gpu_wheels.sh
# Then the device tool's run, in one call (the command, its carry and its timeout):
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# On a GPU machine of your own: bash benchmarks/gpu_check.sh [--out DIR]
#
# Parts, in this order, each under its own timeout inside one overall budget; a part that fails or
# times out does not stop the next:
#   b  benchmarks/telemetry_overhead.py --preset paper160m on the GPU (first: the cost model's inputs);
#      it writes calibration.json: capture/floor ratios measured interleaved at paper shapes, the
#      host-copy rate, eig times (GPU, one CPU thread), per-row capture and GEMM floor
#   d  pytest -m gpu on the test files that hold gpu tests (tests/test_gpu.py: bf16 autocast step,
#      the trainer's compiled path with telemetry vs eager, Muon's bf16 Newton–Schulz vs fp32, eig on
#      CUDA vs CPU; tests/test_metrics_covariance.py: bf16-in/fp32-out capture vs fp64)
#   a  benchmarks/throughput.py: ours, ours in the reference's architecture, nanoGPT-style reference;
#      bf16 + torch.compile, 12 x 1024 tokens per step (goal: ours/reference >= 1.1)
#   c  a 50-step run of paper_160m's widest Muon point (D = 6144) on synthetic data (vocab 50304),
#      bf16, compile, 2 accumulation steps, telemetry every 25 steps decomposed on the GPU, then
#      benchmarks/check_run.py (finite losses, every layer x site x bucket at every event, the cost
#      lines, DONE). Uses +preset=paper when conf/preset/paper.yaml exists.
#   After (a) and (c), their tokens/s (ours, reference, ratio) and part c's step time are added to
#   calibration.json; `sweep.plan plan.calibration=calibration.json` and
#   `telemetry_overhead.py --calibration calibration.json` then read it instead of the constants.
# Logs and the table go to $OUT when set (the device tool brings them back), else to --out DIR,
# else to a fresh /tmp/gpu_check.* folder. Runs, data and the wheels' install go to a /tmp folder.
#
# Options:
#   --parts LIST   comma-separated subset of a,b,c,d (default: all)
#   --budget S     overall seconds for the parts (default 480); a part gets min(its cap, what is left)
#   --out DIR      where logs and summary.txt go (default: $OUT, else a new /tmp/gpu_check.* folder)
#   --dry-run      print what would run (and check that part c's overrides compose), run nothing
#   --smoke        CPU, toy sizes: checks the wiring of every part here, not the GPU (part d skips)
#   --keep-work    keep the /tmp work folder (runs with their checkpoints, data, installed wheels)
# Environment: PYTHON (default python3) is the interpreter that holds torch.
set -u

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
PARTS=a,b,c,d
ORDER=(b d a c)
BUDGET=480
OUTDIR=${OUT:-}
DRY=0
SMOKE=0
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --parts) PARTS=${2:-}; shift 2 ;;
        --parts=*) PARTS=${1#*=}; shift ;;
        --budget) BUDGET=${2:-}; shift 2 ;;
        --budget=*) BUDGET=${1#*=}; shift ;;
        --out) OUTDIR=${2:-}; shift 2 ;;
        --out=*) OUTDIR=${1#*=}; shift ;;
        --dry-run) DRY=1; shift ;;
        --smoke) SMOKE=1; shift ;;
        --keep-work) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
declare -A WANT=()
IFS=, read -r -a _parts <<<"$PARTS"
for p in "${_parts[@]}"; do
    case "$p" in
        a|b|c|d) WANT[$p]=1 ;;
        *) echo "gpu_check: --parts takes a comma-separated subset of a,b,c,d, got '$PARTS'" >&2; exit 2 ;;
    esac
done
if [ ${#WANT[@]} -eq 0 ]; then echo "gpu_check: --parts is empty" >&2; exit 2; fi
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: --budget takes whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

# ---- what each part runs ------------------------------------------------------------------------------
declare -A NAME=([a]="throughput vs nanoGPT-style" [b]="telemetry cost model"
                  [c]="paper_160m widest Muon, 50 steps" [d]="pytest -m gpu")
# Caps in seconds: measured nowhere yet (no GPU was lent while this was written); from the H100
# figures in infra-facts.md and telemetry-cost.md plus compile time. The worst case adds them,
# the install, part c's record check, a kill grace per timeout and the set-up; it must stay <= 480.
declare -A CAP=([a]=105 [b]=90 [c]=125 [d]=50)
INSTALL_CAP=30 CHECK_CAP=30 KILL_GRACE=5 SETUP_S=15
WORST=$((INSTALL_CAP + KILL_GRACE + CHECK_CAP + KILL_GRACE + SETUP_S))
for p in "${!CAP[@]}"; do WORST=$((WORST + CAP[$p] + KILL_GRACE)); done
WORK=/tmp/gpu_check_work.$$
# test files that mark tests gpu (a quoted mention, as in tests/test_gpu_check.py, does not count)
mapfile -t GPU_TEST_FILES < <(grep -lE "(^|[^\"'])pytest\.mark\.gpu\b" tests/test_*.py)

if [ $SMOKE = 1 ]; then
    CMD_a=("$PY" benchmarks/throughput.py --device cpu --n-layer 1 --batch 1 --seq 64 --steps 1 --warmup 1)
    CMD_b=("$PY" benchmarks/telemetry_overhead.py --preset paper160m --device cpu --max-width 768 --rows 256
           --cpu-eig-max-width 768 --repeats 5 --write-calibration CALIBRATION)
else
    CMD_a=("$PY" benchmarks/throughput.py --device cuda --steps 15 --warmup 3)
    # CPU decomposition timed up to D = 1536 (one thread), extrapolated as D^3 above: keeps (b) near a minute
    # 131,072 rows per (layer, site), 5 interleaved repetitions: capture and floor scale linearly to 524,288
    CMD_b=("$PY" benchmarks/telemetry_overhead.py --preset paper160m --device cuda --cpu-eig-max-width 1536
           --rows 131072 --repeats 5 --write-calibration CALIBRATION)
fi
CMD_d=("$PY" -m pytest -m gpu -q -rs -p no:cacheprovider "${GPU_TEST_FILES[@]}")

# Part c: the overrides by key, so that --smoke can shrink the sizes and keep everything else.
C_KEYS=(model model.ffn_mult optim data data.vocab_size data.train_tokens data.val_tokens data.eval_tokens
        train.steps train.global_batch train.micro_batch train.eval_every train.eval_batches train.ckpt_every
        train.log_every train.compile train.device train.progress telemetry.every telemetry.decompose_on
        telemetry.bucket_sequences data.stream_ranks data.stream_rows
        logger sweep_name paths.runs_root paths.data_root)
declare -A C=(
    [model]=gpt2_160m [model.ffn_mult]=8 [optim]=muon
    [data]=synthetic [data.vocab_size]=50304 [data.train_tokens]=4000000 [data.val_tokens]=131072
    [data.eval_tokens]=null
    [train.steps]=50 [train.global_batch]=64 [train.micro_batch]=32 [train.eval_every]=25 [train.eval_batches]=2
    [train.ckpt_every]=50 [train.log_every]=5 [train.compile]=true [train.device]=cuda [train.progress]=false
    [telemetry.every]=25 [telemetry.decompose_on]=gpu
    # 64 of the paper's 1024 sequences per step: buckets from the first quarter (its rank 0 share),
    # the stream as one block per step (the paper's 4 x 64 layout needs 256 sequences)
    [telemetry.bucket_sequences]=16 [data.stream_ranks]=null [data.stream_rows]=null
    [logger]=none [sweep_name]=gpu_check_c [paths.runs_root]=$WORK/runs [paths.data_root]=$WORK/data
)
if [ $SMOKE = 1 ]; then
    C[train.steps]=6; C[train.global_batch]=4; C[train.micro_batch]=4; C[train.eval_every]=3; C[train.ckpt_every]=6; C[train.log_every]=1
    C[train.compile]=false; C[train.device]=cpu; C[telemetry.every]=3; C[telemetry.decompose_on]=cpu
    C[telemetry.bucket_sequences]=1
    C[data.train_tokens]=200000; C[data.val_tokens]=16384
    C_KEYS+=(model.n_layer model.d_model model.n_head model.context_len telemetry.min_bucket_rows)
    C[model.n_layer]=2; C[model.d_model]=64; C[model.n_head]=2; C[model.context_len]=64
    C[telemetry.min_bucket_rows]=64
fi
C_ARGS=(+preset=paper)  # the paper's protocol (conf/preset/paper.yaml): 64 sequences per step, 2 micro-batches of 32
for k in "${C_KEYS[@]}"; do C_ARGS+=("$k=${C[$k]}"); done
CMD_c=("$PY" -m specsweep.sweep.train "${C_ARGS[@]}")
CMD_c_check=("$PY" benchmarks/check_run.py "${C[paths.runs_root]}/${C[sweep_name]}")

# ---- dry run ---------------------------------------------------------------------------------------------
if [ $DRY = 1 ]; then
    echo "gpu_check --dry-run: parts $(for p in "${ORDER[@]}"; do [ -n "${WANT[$p]:-}" ] && printf '%s' "$p"; done)," \
         "budget ${BUDGET}s, python $PY, smoke=$SMOKE"
    if ls .whl/*.whl >/dev/null 2>&1; then
        echo "wheels: $(ls .whl/*.whl | wc -l) in .whl/ ($(du -sh .whl | cut -f1)), installed (unless hydra is" \
             "importable) by pip install --no-index --no-deps --target $WORK/site"
    else
        echo "wheels: none in .whl/ (bash benchmarks/gpu_wheels.sh makes them)"
    fi
    for p in "${ORDER[@]}"; do
        [ -n "${WANT[$p]:-}" ] || continue
        echo "($p) ${NAME[$p]} [cap ${CAP[$p]}s]:"
        case $p in
            a) echo "    ${CMD_a[*]}" ;;
            b) echo "    ${CMD_b[*]}" ;;
            c) echo "    ${CMD_c[*]}"; echo "    ${CMD_c_check[*]}" ;;
            d) echo "    ${CMD_d[*]}" ;;
        esac
    done
    if [ -n "${WANT[c]:-}" ]; then
        # Hydra composition and validation of part c's overrides, here (no training): catches a key that
        # does not exist and a value the run would refuse (sweep.plan validates as the launch does)
        if "$PY" -c "import hydra" 2>/dev/null; then
            if timeout 300 "$PY" -m specsweep.sweep.plan "${C_ARGS[@]}" >/dev/null 2>"$WORK.plan_err" \
                    && out=$(timeout 120 "${CMD_c[@]}" --cfg job 2>&1); then
                rm -f "$WORK.plan_err"
                echo "(c) overrides compose: model.n_layer=$(grep -m1 -E '^  n_layer:' <<<"$out" | awk '{print $2}')" \
                     "ffn_mult=$(grep -m1 -E '^  ffn_mult:' <<<"$out" | awk '{print $2}')" \
                     "telemetry.every=$(awk '/^telemetry:/{t=1} t&&/^  every:/{print $2; exit}' <<<"$out")"
            else
                echo "(c) overrides do NOT compose or validate:"
                { cat "$WORK.plan_err"; echo "${out:-}"; } | tail -n 15 | sed 's/^/    /'; rm -f "$WORK.plan_err"; exit 1
            fi
        else
            echo "(c) composition not checked: hydra is not importable by $PY"
        fi
    fi
    echo "worst case: install $INSTALL_CAP + caps $(for p in "${ORDER[@]}"; do printf '%s:%s ' "$p" "${CAP[$p]}"; done)+" \
         "part c's check $CHECK_CAP + a kill grace of $KILL_GRACE per timeout (6) + set-up $SETUP_S"
    echo "worst_case_s=$WORST"
    exit 0
fi

# ---- set-up ----------------------------------------------------------------------------------------------
if [ -z "$OUTDIR" ]; then OUTDIR=$(mktemp -d /tmp/gpu_check.XXXXXX); fi
mkdir -p "$OUTDIR" "$WORK" || exit 2
[ $KEEP = 1 ] || trap 'rm -rf "$WORK"' EXIT  # part c's checkpoint alone is a few GB
SUMMARY=$OUTDIR/summary.txt
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 WANDB_MODE=disabled WANDB_SILENT=true
export SPECSWEEP_RUNS=$WORK/runs SPECSWEEP_DATA=$WORK/data TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
{
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) git $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "smoke=$SMOKE budget=${BUDGET}s"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
    "$PY" -c "import sys, torch
print(f'python {sys.version.split()[0]} torch {torch.__version__} cuda {torch.cuda.is_available()}')" 2>&1
} >"$SUMMARY.head"
cat "$SUMMARY.head"
SETUP="ok"
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        # never the network: only the carried wheels, into a folder of their own
        if timeout --kill-after=$KILL_GRACE $INSTALL_CAP "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$WORK/site" .whl/*.whl >"$OUTDIR/setup.log" 2>&1; then
            SETUP="wheels installed ($(ls .whl/*.whl | wc -l))"
        else
            SETUP="wheel install FAILED (setup.log)"
        fi
    else
        SETUP="no .whl/ and no hydra: part c and the trainer test cannot run (benchmarks/gpu_wheels.sh)"
    fi
fi
[ -s "$OUTDIR/setup.log" ] || rm -f "$OUTDIR/setup.log"  # $OUT brings back 8 files at most
export PYTHONPATH=$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
echo "setup: $SETUP" | tee -a "$SUMMARY.head"

# ---- running the parts -----------------------------------------------------------------------------------
CALIBRATION=$OUTDIR/calibration.json

add_to_calibration() {  # "key=value ..." -> the calibration file's "measured" figures (numbers only)
    [ -f "$CALIBRATION" ] && [ -n "$1" ] || return 0
    "$PY" - "$CALIBRATION" "$1" <<'PYEOF' || echo "gpu_check: could not add '$1' to the calibration"
import json, sys
path, pairs = sys.argv[1], sys.argv[2].split()
data = json.load(open(path))
for pair in pairs:
    key, _, value = pair.partition("=")
    try:
        data.setdefault("measured", {})[key] = float(value)
    except ValueError:
        pass
json.dump(data, open(path, "w"), indent=1)
PYEOF
}

c_step_figures() {  # part c's median step seconds and tokens/s (compiled steps, from its metrics)
    [ -f "$1/metrics.jsonl" ] || return 0
    "$PY" - "$1/metrics.jsonl" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s") and r.get("step", 0) > 5]
if rates:
    tps = statistics.median(rates)
    tokens = next(r["tokens"] / r["step"] for r in rows if r.get("tokens") and r.get("step"))
    print(f"c_tokens_per_s={tps:.1f} c_step_s={tokens / tps:.4f}")
PYEOF
}
declare -A STATUS=() SECS=() KEY=()

# run_timed PART LOG CMD...: run under what is left of the part's time; sets RC
run_timed() {
    local part=$1 log=$2; shift 2
    local left=$((PART_END - $(date +%s)))
    if [ $left -lt 5 ]; then RC=124; echo "gpu_check: no time left" >>"$log"; return; fi
    timeout --kill-after=$KILL_GRACE "$left" "$@" >>"$log" 2>&1
    RC=$?
}

key_numbers() {  # the part's key numbers, from its log
    local part=$1 log=$2
    case $part in
        a) grep -E '^[a-z_]+_ms=' "$log" | tail -1 |
               awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}
                     printf "ms/step ours %s refarch %s ref %s | tok/s ours %.0f ref %.0f | ",
                            v["ours_ms"], v["ours_refarch_ms"], v["reference_ms"], v["ours_tok_s"], v["reference_tok_s"]
                     printf "ours/ref %s refarch/ref %s ours/refarch %s",
                            v["ratio_ours_ref"], v["ratio_refarch_ref"], v["ratio_ours_refarch"]}' ;;
        b) grep -E '^capture_floor_x_' "$log" | tail -1 ;;
        c) grep -E '^check=' "$log" | tail -1 | sed 's/^check=[A-Z]* //' ;;
        d) grep -E '^[0-9]+ (passed|failed|skipped|error)|^=+ .*(passed|failed|skipped|error)' "$log" | tail -1 |
               sed 's/^=* *//; s/ *=*$//' ;;
    esac
}

for p in "${ORDER[@]}"; do
    [ -n "${WANT[$p]:-}" ] || continue
    log=$OUTDIR/part_$p.log
    now=$(date +%s)
    left=$((DEADLINE - now))
    if [ $left -lt 20 ]; then
        STATUS[$p]="SKIPPED"; SECS[$p]=0; KEY[$p]="no time left in the ${BUDGET}s budget"
        continue
    fi
    PART_END=$((now + (left < CAP[$p] ? left : CAP[$p])))
    echo "== ($p) ${NAME[$p]}: up to $((PART_END - now))s, log $log"
    case $p in
        a) run_timed a "$log" "${CMD_a[@]}"
           add_to_calibration "$(grep -E '^[a-z_]+_ms=' "$log" | tail -1)" ;;
        b) run_timed b "$log" "${CMD_b[@]/CALIBRATION/$CALIBRATION}" ;;
        d) run_timed d "$log" "${CMD_d[@]}" ;;
        c) echo "+ ${CMD_c[*]}" >"$log"
           run_timed c "$log" "${CMD_c[@]}"
           run_root=$(dirname "$(ls -d "${C[paths.runs_root]}/${C[sweep_name]}"/*/run.json 2>/dev/null | head -1)")
           train_rc=$RC
           # the records are checked whatever the run's exit (a time-out still shows how far it got)
           add_to_calibration "$(c_step_figures "$run_root")"
           PART_END=$(($(date +%s) + CHECK_CAP))
           run_timed c "$log" "${CMD_c_check[@]}"
           [ $train_rc -ne 0 ] && RC=$train_rc
           run=$run_root
           [ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$OUTDIR/c_metrics.jsonl"
           [ -f "$run/spectra.jsonl" ] && cp "$run/spectra.jsonl" "$OUTDIR/c_spectra.jsonl" ;;
    esac
    SECS[$p]=$(($(date +%s) - now))
    case $RC in
        0) STATUS[$p]="PASS" ;;
        124|137) STATUS[$p]="TIMEOUT" ;;
        *) STATUS[$p]="FAIL($RC)" ;;
    esac
    KEY[$p]=$(key_numbers "$p" "$log")
    if [ "${STATUS[$p]}" != PASS ]; then
        echo "-- last lines of $log:"; tail -n 15 "$log" | sed 's/^/   /'
    fi
done

# ---- the summary table -------------------------------------------------------------------------------------
{
    cat "$SUMMARY.head"
    echo "total $(($(date +%s) - T0))s; logs in $OUTDIR"
    printf '%-4s %-34s %-9s %5s  %s\n' part what status secs "key numbers"
    for p in "${ORDER[@]}"; do
        [ -n "${WANT[$p]:-}" ] || continue
        printf '%-4s %-34s %-9s %5s  %s\n' "($p)" "${NAME[$p]}" "${STATUS[$p]}" "${SECS[$p]}" "${KEY[$p]:--}"
    done
} >"$SUMMARY"
rm -f "$SUMMARY.head"
echo
cat "$SUMMARY"
for p in "${!STATUS[@]}"; do [ "${STATUS[$p]}" = PASS ] || exit 1; done
exit 0
