#!/bin/sh
# final.sh -- reproduce the paper's table (ICCV 2023, "Inherent Redundancy in Spiking Neural Networks").
#
#   DATA_ROOT=/data sh final.sh                 every row of the paper's table, LIF-SNN and + ASA
#   DATA_ROOT=/data sh final.sh gesture gait_day    only these rows
#   SEEDS="0 1 2" DATA_ROOT=/data sh final.sh   every row once per seed; the table: mean +- std, n
#   sh final.sh demo                            the same pipeline on built-in synthetic data, 3 seeds (CPU, minutes)
#   NMNIST_PATH=/data/N-MNIST sh final.sh demo  ... plus a short N-MNIST row
#   JOBS=2 sh final.sh demo                     two runs at a time (each with half the CPU threads)
#   DEVICES="cuda:0 cuda:1 cuda:2 cuda:3" DATA_ROOT=/data sh final.sh    one run per GPU, 4 at a time
#   SLURM_FLAGS="--gres=gpu:1 --time=24:00:00 -p gpu" DATA_ROOT=/data sh final.sh slurm [rows]
#                                               a SLURM job array (one task per run) and a collector job
#   sh final.sh -h                              this help
#
# Each row runs twice (-attention no, -attention ASA) with the authors' settings: a row's flags are
# its dataset's preset (datasets/__init__.py) plus the overrides the row lists (utils/analysis/rows.py,
# where the rows are written down); `python3 -m utils.analysis.rows --list` prints them.
# Run folders: $RUNS_DIR/<row>_no and $RUNS_DIR/<row>_ASA (train_test.py's -name) for the row's own
# seed (the authors' 0), <row>_no_s<seed> and <row>_ASA_s<seed> for other seeds; console logs
# beside them (<run>.log, .err; appended to, never overwritten). A run whose metrics.csv has every
# epoch is not run again; an unfinished one is continued with train_test.py -resume (from its
# last.pth, or from epoch 1 in its own folder when it stopped before its first checkpoint); a folder
# without config.json is moved aside to <name>.unfinished-<time> and the run started again. A run
# folder held by another process (another final.sh, a SLURM task, a train_test.py) is left alone
# with one line. At the end the collector
# (python3 -m utils.analysis.table) writes $OUT_DIR/table.md and table.csv (reproduced vs paper, deltas,
# energy; with several seeds mean +- sample std and n, deltas per seed then averaged) and
# $OUT_DIR/curves_<row>.png (test accuracy and NASFR per epoch, LIF-SNN and + ASA), and
# utils/analysis/plots.py draws Figure 1(c)-style PNGs for every row with both runs (first seed).
#
# Data: set DATA_ROOT once; each row reads one sub-folder (a row whose folder is missing or empty
# is skipped with a note saying how to prepare it):
#   gesture      $DATA_ROOT/gesture      per-sample hdf5 (train/, test/):
#                    python3 -m datasets.prepare gesture --raw DvsGesture/ --out $DATA_ROOT/gesture
#   gesture_sj   $DATA_ROOT/gesture_sj   spikingjelly root (download/ or events_np/):
#                    python3 -m datasets.prepare gesture_sj --raw DvsGesture/ --out $DATA_ROOT/gesture_sj
#   gait_day     $DATA_ROOT/gait_day     python3 -m datasets.prepare gait --raw DVS128-Gait-Day/ --out $DATA_ROOT/gait_day
#   gait_night   $DATA_ROOT/gait_night   python3 -m datasets.prepare gait --raw DVS128-Gait-Night/ --out $DATA_ROOT/gait_night
#   action       $DATA_ROOT/action       the DailyAction-DVS class folders of *.aedat as released
#                    (check: python3 -m datasets.prepare action --raw $DATA_ROOT/action)
#   har_dvs      $DATA_ROOT/har_dvs      python3 -m datasets.prepare har_dvs --raw HARDVS/ --out $DATA_ROOT/har_dvs
#   recognition  $DATA_ROOT/recognition  python3 -m datasets.prepare recognition --raw PAF/ --out $DATA_ROOT/recognition
#   (demo)       none; N-MNIST via NMNIST_PATH (Train/<digit>/*.bin, Test/<digit>/*.bin)
# Layouts in detail: docs/datasets.md; this script: docs/reproduce.md.
#
# Each run prints one line when it starts and one when it finishes, fails or is interrupted (with its
# log's path); its epoch lines follow, prefixed with the run's name when several runs go at once.
# The last line counts the runs and the problems: a run of the table that is not finished at the end
# (failed, interrupted, held by another process, or a folder of other settings) is a problem, and
# the exit status is 0 only without problems. Stopped by SIGINT or SIGTERM, final.sh passes the
# signal to every running run, which saves a resumable last.pth; it then exits 75 without the
# table, and the same command continues every run.
#
# Environment (all optional):
#   DATA_ROOT    data folder (default data)
#   SEEDS        seeds, e.g. "0 1 2": each row runs once per seed (default: the row's own seed, 0;
#                the demo: "0 1 2")
#   RUNS_DIR     run folders (default results/runs)
#   OUT_DIR      table and curves (default results; the demo: results/demo)
#   IMG_DIR      figures (default $OUT_DIR/figures/<row>; the demo: img)
#   EXTRA_FLAGS  appended to every train_test.py call, e.g. "-num_work 8"; quoted as in the shell
#                ("-num_work 4 -backend eager"); a run whose folder was started with them continues
#                with them. Flags final.sh sets (-attention -name -modelPath -resume -seed -dataset
#                -data_path) are refused: use SEEDS, DATA_ROOT, RUNS_DIR
#   JOBS         runs at the same time (default: the number of DEVICES, else 1); on CPU each run gets
#                cores/JOBS threads (OMP_NUM_THREADS, unless you set it)
#   DEVICES      devices, one per job slot, e.g. "cuda:0 cuda:1" (each running run gets its own)
#   SLURM_FLAGS  with 'slurm': sbatch resources for each run, e.g. "--gres=gpu:1 --time=24:00:00 -p gpu"
#   SUBMIT=0     with 'slurm': write the scripts and print how to submit them, submit nothing
#   PYTHON       interpreter (default python3)
#   VERBOSE=1    show train_test.py's whole output (the model summary too) instead of the epoch
#                lines only (progress bars are in the .err logs)
set -u
cd "$(dirname "$0")" || exit 2
PYTHON=${PYTHON:-python3}

usage() {
    sed -n '2,/^set -u/p' "$0" | sed -e '/^set -u/d' -e 's/^# \{0,1\}//'
}

mode=local
case "${1:-}" in
    -h|--help|help) usage; exit 0 ;;
    slurm) mode=slurm; shift ;;
esac
plan_args=""
case "${1:-}" in
    demo) plan_args=--demo; shift ;;
esac
if [ "$mode" = slurm ]; then
    # shellcheck disable=SC2086  # $plan_args: one flag or none
    exec "$PYTHON" -m utils.analysis.slurm $plan_args "$@"
fi

# The plan (utils/analysis/launch.py) is a JSON file; this script only ever handles run numbers.
start=$(date +%s)
state=$(mktemp -d "${TMPDIR:-/tmp}/final.XXXXXX") || exit 2
trap 'rm -rf "$state"' EXIT
plan=$state/plan.json
# shellcheck disable=SC2086
"$PYTHON" -m utils.analysis.launch plan --counts "$state/counts" $plan_args -- "$plan" "$@" || exit 2
read -r runs jobs <"$state/counts" || exit 2

# SIGINT / SIGTERM: no new run starts; each running run gets SIGTERM (it saves and exits 75).
stop() {
    [ -e "$state/stop" ] && return
    : >"$state/stop"
    echo "final.sh: stopping; each running run saves a resumable last.pth (the same command continues)"
    for f in "$state"/pid.*; do
        [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
    done
}
trap stop INT TERM HUP

# One job slot: takes the next run no slot has claimed (mkdir is atomic) until none is left. A
# signal to the slot itself (Ctrl-C reaches the whole process group) only ends its waiting early:
# the slot waits on for its run, which stops by itself, so the summary below counts it.
slot() {
    trap : INT TERM HUP
    k=0
    while [ "$k" -lt "$runs" ] && [ ! -e "$state/stop" ]; do
        if mkdir "$state/claim.$k" 2>/dev/null; then
            "$PYTHON" -m utils.analysis.launch run "$plan" "$k" --slot "$1" --record "$state/record" </dev/null &
            child=$!
            echo "$child" >"$state/pid.$1"
            [ -e "$state/stop" ] && kill -TERM "$child" 2>/dev/null
            while kill -0 "$child" 2>/dev/null; do wait "$child"; done
            rm -f "$state/pid.$1"
        fi
        k=$((k + 1))
    done
}
pids=""
i=0
while [ "$i" -lt "$jobs" ]; do
    slot "$i" &
    pids="$pids $!"
    i=$((i + 1))
done
for p in $pids; do
    while kill -0 "$p" 2>/dev/null; do wait "$p"; done     # a signal's trap interrupts wait: wait again
done

finished=0; failed=0; interrupted=0; skipped=0
if [ -f "$state/record" ]; then
    while read -r name outcome; do
        case "$outcome" in
            finished) finished=$((finished + 1)) ;;
            interrupted) interrupted=$((interrupted + 1)) ;;
            skipped) skipped=$((skipped + 1)) ;;
            *) failed=$((failed + 1)) ;;
        esac
    done <"$state/record"
fi
started=$((finished + failed + interrupted))
counts="$started run(s) started ($finished finished, $failed failed, $interrupted interrupted, $skipped left to another process)"
if [ -e "$state/stop" ]; then
    echo "final.sh: stopped: $counts, $(( $(date +%s) - start ))s in all; the same command continues"
    exit 75
fi

# The table, the curves and the figures; then every run of the table that is not finished.
"$PYTHON" -m utils.analysis.launch collect "$plan" --record "$state/record" --problems "$state/problems"
problems=$(cat "$state/problems" 2>/dev/null) || problems=1
echo "final.sh: $counts, $problems problem(s), $(( $(date +%s) - start ))s in all"
[ "$problems" = 0 ]
