#!/usr/bin/env bash
# Mutation testing of one core module with mutmut 3 (run by hand, not in CI; minutes to hours).
#
#   scripts/mutation_test.sh MODULE [TEST ...]
#   scripts/mutation_test.sh perforation_d2/evaluation/roc.py tests/evaluation/test_metrics.py
#   scripts/mutation_test.sh all            # every core module below with its fast tests
#
# mutmut mutates MODULE (one small change at a time: an operator, a constant, a comparison) and
# runs the given tests (default: the module's fast tests listed below) against each mutant; a
# mutant that no test fails "survived" and points at untested behaviour. The repository is copied
# to $MUTMUT_WORKDIR (default /tmp/perforation_d2-mutmut/<module>), where the [tool.mutmut]
# configuration is written and mutmut keeps its mutants/ state: nothing is written into the
# checkout. Prints mutmut's per-mutant results and the score (killed / all). Needs mutmut==3.8.1
# (requirements.txt). MUTMUT_CHILDREN (default 2) sets the parallel test processes.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
MUTMUT="$(dirname "$PYTHON")/mutmut"
CHILDREN="${MUTMUT_CHILDREN:-2}"

# Core module -> its fast tests (seconds each).
declare -A FAST_TESTS=(
  [perforation_d2/evaluation/series_optimization.py]="tests/evaluation/test_series_optimization.py tests/evaluation/test_series_optimization_borders.py tests/evaluation/test_predictions.py"
  [perforation_d2/evaluation/roc.py]="tests/evaluation/test_metrics.py tests/evaluation/test_roc_spec95.py tests/evaluation/test_predictions.py"
  [perforation_d2/evaluation/matching.py]="tests/evaluation/test_metrics.py tests/evaluation/test_intervals_and_criteria.py"
  [perforation_d2/evaluation/delong.py]="tests/evaluation/test_delong.py"
  [perforation_d2/modeling/losses.py]="tests/modeling/test_losses.py tests/modeling/test_losses_defaults_and_reductions.py tests/modeling/test_dr_iou_beta_reaches_losses.py"
  [perforation_d2/data/clip_transforms.py]="tests/data/test_mapper.py tests/data/test_augmentation_ranges.py"
  [perforation_d2/data/dicom/pseudonyms.py]="tests/data/dicom/test_series_key_salt.py tests/data/dicom/test_dicom_import.py tests/data/dicom/test_privacy_dicom.py"
  [perforation_d2/io/atomic.py]="tests/io/test_atomic.py tests/io/test_atomic_leftovers.py tests/io/test_transaction.py"
)

usage() { sed -n 2,15p "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage

if [ "$1" = all ]; then
  for module in "${!FAST_TESTS[@]}"; do "$0" "$module"; done
  exit 0
fi

MODULE="$1"; shift
[ -f "$REPO/$MODULE" ] || { echo "error: $MODULE: no such module under $REPO" >&2; exit 2; }
if [ $# -gt 0 ]; then TESTS=("$@"); else read -r -a TESTS <<< "${FAST_TESTS[$MODULE]:-}"; fi
[ ${#TESTS[@]} -gt 0 ] || { echo "error: give the tests to run against $MODULE" >&2; exit 2; }

WORK="${MUTMUT_WORKDIR:-/tmp/perforation_d2-mutmut/$(basename "$MODULE" .py)}"
rm -rf "$WORK"; mkdir -p "$WORK"
# A copy of the working tree (not the venv, git data or outputs).
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=__pycache__ --exclude=./mutants \
    --exclude=./datasets --exclude=./output --exclude=./outputs -cf - . | tar -C "$WORK" -xf -

quoted_tests=$(printf '"%s", ' "${TESTS[@]}")
cat >> "$WORK/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["perforation_d2"]
only_mutate = ["$MODULE"]
also_copy = ["configs", "train_net.py", "setup.py"]
pytest_add_cli_args = ["-q", "-x", "-p", "no:cacheprovider", "-p", "no:random_order", "-o", "addopts=", "--timeout=300"]
pytest_add_cli_args_test_selection = [${quoted_tests%, }]
TOML

cd "$WORK"
echo "mutmut on $MODULE with ${TESTS[*]} (in $WORK)" >&2
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$MUTMUT" run --max-children "$CHILDREN" >"$WORK/mutmut-run.log" 2>&1 || true
"$MUTMUT" results --all true > "$WORK/results.txt" 2>&1 || true
killed=$(grep -c ': killed$' "$WORK/results.txt" || true)
total=$(grep -c ': ' "$WORK/results.txt" || true)
grep -v ': killed$' "$WORK/results.txt" || true
echo "$MODULE: $killed killed of $total mutants (details: cd $WORK && $MUTMUT show <name>)"
