#!/bin/sh
# final.sh -- reproduce the paper's table (ICCV 2023, "Inherent Redundancy in Spiking Neural Networks").
#
#   DATA_ROOT=/data sh final.sh                 every row of the paper's table, LIF-SNN and + ASA
#   DATA_ROOT=/data sh final.sh gesture gait_day    only these rows
#   SEEDS="0 1 2" DATA_ROOT=/data sh final.sh   every row once per seed; the table: mean +- std, n
#   sh final.sh demo                            the same pipeline on built-in synthetic data, 3 seeds (~10 min, CPU)
#   NMNIST_PATH=/data/N-MNIST sh final.sh demo  ... plus a short N-MNIST row
#   sh final.sh -h                              this help
#
# Each row runs twice (-attention no, -attention ASA) with the authors' settings; the rows and their
# flags live in ONE place, the dataset presets (datasets/__init__.py), from which utils/analysis/rows.py
# builds the rows; `python3 -m utils.analysis.table --list` prints them.
# Run folders: $RUNS_DIR/<row>_no and $RUNS_DIR/<row>_ASA (train_test.py's -name) for the row's own
# seed (the authors' 0), <row>_no_s<seed> and <row>_ASA_s<seed> for other seeds; console logs
# beside them (<run>.log, .err). A run whose metrics.csv has every epoch is not run
# again; an unfinished one is continued from its last.pth with train_test.py -resume, or, when it
# has no checkpoint yet, moved aside to <name>.unfinished-<time> and started again. At the end the collector
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
# Environment (all optional):
#   DATA_ROOT    data folder (default data)
#   SEEDS        seeds, e.g. "0 1 2": each row runs once per seed (default: the row's own seed, 0;
#                the demo: "0 1 2")
#   RUNS_DIR     run folders (default results/runs)
#   OUT_DIR      table and curves (default results; the demo: results/demo)
#   IMG_DIR      figures (default $OUT_DIR/figures/<row>; the demo: img)
#   EXTRA_FLAGS  appended to every train_test.py call, e.g. "-device cuda:1 -num_work 8"
#   PYTHON       interpreter (default python3)
#   VERBOSE=1    show train_test.py's whole output (model summary, progress bars) instead of the
#                epoch lines only
set -u
cd "$(dirname "$0")" || exit 2

PYTHON=${PYTHON:-python3}
DATA_ROOT=${DATA_ROOT:-data}
RUNS_DIR=${RUNS_DIR:-results/runs}
NMNIST_PATH=${NMNIST_PATH:-}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
VERBOSE=${VERBOSE:-0}
SEEDS=${SEEDS:-}

usage() {
    sed -n '2,/^set -u/p' "$0" | sed -e '/^set -u/d' -e 's/^# \{0,1\}//'
}

demo=0
case "${1:-}" in
    -h|--help|help) usage; exit 0 ;;
    demo) demo=1; shift ;;
esac
if [ "$demo" = 1 ]; then
    OUT_DIR=${OUT_DIR:-results/demo}
    IMG_DIR=${IMG_DIR:-img}
    SEEDS=${SEEDS:-0 1 2}
    plan_args="--demo"
else
    OUT_DIR=${OUT_DIR:-results}
    IMG_DIR=${IMG_DIR:-}
    plan_args=""
fi

export DATA_ROOT RUNS_DIR NMNIST_PATH SEEDS
start=$(date +%s)
plan=$($PYTHON -m utils.analysis.table --plan $plan_args "$@") || exit 2
mkdir -p "$RUNS_DIR" || exit 2
echo "final.sh: data root $DATA_ROOT, run folders in $RUNS_DIR, table in $OUT_DIR${SEEDS:+, seeds $SEEDS}"

# Show the lines worth seeing from train_test.py's stdout (the full output is in the .log file).
show() {
    if [ "$VERBOSE" = 1 ]; then cat; return; fi
    while IFS= read -r line; do
        case "$line" in
            "run folder:"*|device*|epoch*|done:*|note:*|"test acc"*) echo "   $line" ;;
        esac
    done
}

failed=0
ran=0
rows_done=""
while IFS='|' read -r kind row att name ddir flags resume; do
    [ -n "$kind" ] || continue
    case "$kind" in
        NOTE) echo "-- $row"; continue ;;
        RESTART)
            old="$RUNS_DIR/$name.unfinished-$(date +%Y%m%d-%H%M%S)"
            mv "$RUNS_DIR/$name" "$old" && echo "-- $name: unfinished with no checkpoint to continue from; moved to $old" ;;
    esac
    log="$RUNS_DIR/$name.log"
    err="$RUNS_DIR/$name.err"
    rcfile="$RUNS_DIR/$name.rc"
    set -- -attention "$att" -name "$name" -modelPath "$RUNS_DIR"
    [ -n "$ddir" ] && set -- "$@" -data_path "$ddir"
    [ "$resume" = resume ] && set -- "$@" -resume "$RUNS_DIR/$name"
    seed=$(echo " $flags " | sed -n 's/.* -seed \([0-9]*\) .*/\1/p')
    echo "== $row${SEEDS:+, seed $seed}, attention $att${resume:+ (continuing)}: $RUNS_DIR/$name  (log: $log)"
    t0=$(date +%s)
    # shellcheck disable=SC2086  # $flags and $EXTRA_FLAGS are flag lists: word splitting intended
    { PYTHONUNBUFFERED=1 $PYTHON train_test.py $flags "$@" $EXTRA_FLAGS </dev/null 2>"$err"
      echo $? >"$rcfile"; } | tee -a "$log" | show
    rc=$(cat "$rcfile" 2>/dev/null || echo 1)
    rm -f "$rcfile"
    ran=$((ran + 1))
    if [ "$rc" != 0 ]; then
        failed=$((failed + 1))
        echo "!! $name failed (exit $rc) after $(( $(date +%s) - t0 ))s; last lines of $err:"
        tail -n 5 "$err" | sed 's/^/   /'
    else
        echo "   finished in $(( $(date +%s) - t0 ))s"
    fi
done <<EOF
$plan
EOF

# The table and the curves: every paper row (also those not run), or the demo rows that have runs;
# the seeds asked for (all found when SEEDS is unset).
seed_args=""
[ -n "$SEEDS" ] && seed_args="--seeds $SEEDS"
# shellcheck disable=SC2086  # $seed_args: a flag and its words
if [ "$demo" = 1 ]; then
    $PYTHON -m utils.analysis.table "$RUNS_DIR" --out "$OUT_DIR" --demo $seed_args
else
    $PYTHON -m utils.analysis.table "$RUNS_DIR" --out "$OUT_DIR" --all-paper-rows $seed_args
fi || failed=$((failed + 1))

# Figures for every row whose two runs of the first seed finished far enough to have a best.pth.
# shellcheck disable=SC2086
pairs=$($PYTHON -m utils.analysis.table --pairs --plan $plan_args) || failed=$((failed + 1))
while IFS='|' read -r r lif asa; do
    [ -n "$r" ] || continue
    if [ -f "$lif/best.pth" ] && [ -f "$asa/best.pth" ]; then
        if [ "$demo" = 1 ]; then
            dir=$IMG_DIR; prefix="${r#demo_}_"
            # the README shows the demo's curves beside its other figures
            if [ -f "$OUT_DIR/curves_$r.png" ]; then
                mkdir -p "$dir" && cp "$OUT_DIR/curves_$r.png" "$dir/${prefix}curves.png" || failed=$((failed + 1))
            fi
        else
            dir=${IMG_DIR:-$OUT_DIR/figures}; prefix="${r}_"
        fi
        $PYTHON -m utils.analysis.plots --lif "$lif" --asa "$asa" --out "$dir" \
            --prefix "$prefix" || failed=$((failed + 1))
    fi
done <<EOF
$pairs
EOF

echo "final.sh: $ran run(s) started, $failed problem(s), $(( $(date +%s) - start ))s in all; table: $OUT_DIR/table.md"
if [ "$ran" = 0 ] && [ "$demo" = 0 ] && ! ls "$RUNS_DIR" 2>/dev/null | grep -Eq '_(no|ASA)(_s[0-9]+)?$'; then
    echo "final.sh: no data found under $DATA_ROOT; 'sh final.sh demo' runs the pipeline on built-in data."
fi
[ "$failed" = 0 ]
