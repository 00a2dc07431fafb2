#!/usr/bin/env bash
# Check a frozen bundle the way a user would run it (build.sh runs this; a failure stops the build):
#
#   packaging/check-bundle.sh dist/sd-fsmis/sd-fsmis
#
# In a throw-away SD_FSMIS_HOME (the user's models and settings are not touched), without the build's
# Python on any path:
#   0. --check-imports: every module imported lazily or by name, with the data files read at import; a
#      failure names the missing module or data file (e.g. kernels/_internals/python_depends.json)
#   1. --version and `models list` (the CLI starts, the sub-commands are there)
#   2. --self-test: the main window offscreen, the demo study painted and segmented with the classical
#      engine (Dice checked) and with a tiny SD-FSMIS model built in memory
#   3. `models create --preset tiny` + `models check` (a model written to the store, loaded back with
#      safetensors, segmenting a phantom)
#   4. with SD_FSMIS_CHECK_DATA=DIR (a CHAOS-layout data set): `train` for 2 steps (accelerate, peft code)
set -euo pipefail

EXE="${1:?usage: check-bundle.sh PATH/TO/sd-fsmis}"
[ -x "$EXE" ] || { echo "check-bundle.sh: $EXE is not an executable" >&2; exit 1; }
EXE="$(cd "$(dirname "$EXE")" && pwd)/$(basename "$EXE")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sd-fsmis-bundle-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export SD_FSMIS_HOME="$WORK/home"
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

now_ms() {  # milliseconds since the epoch (BSD date on macOS has no %N: whole seconds there)
    local t
    t="$(date +%s%N)"
    case "$t" in *N) echo $(( $(date +%s) * 1000 )) ;; *) echo $(( t / 1000000 )) ;; esac
}

step() {  # step NAME COMMAND...: run it, print its time; show the output and stop on failure
    local name="$1"; shift
    local start ms
    start=$(now_ms)
    if ! "$@" > "$WORK/out.txt" 2>&1; then
        cat "$WORK/out.txt" >&2
        echo "check-bundle.sh: FAILED: $name" >&2
        exit 1
    fi
    ms=$(( $(now_ms) - start ))
    printf '    %-28s %4d.%d s  %s\n' "$name" $((ms / 1000)) $((ms % 1000 / 100)) "$(tail -n 1 "$WORK/out.txt")"
}

QT_QPA_PLATFORM=offscreen step "--check-imports" "$EXE" --check-imports
step "--version" "$EXE" --version
step "models list" "$EXE" models list
step "--self-test" "$EXE" --self-test
grep -q "^self-test passed" "$WORK/out.txt" || { cat "$WORK/out.txt" >&2; echo "check-bundle.sh: FAILED: no 'self-test passed'" >&2; exit 1; }
step "models create --preset tiny" "$EXE" models create --preset tiny --name bundle-check
step "models check" "$EXE" models check bundle-check --device cpu
if [ -n "${SD_FSMIS_CHECK_DATA:-}" ]; then
    step "train (2 steps)" "$EXE" train --model bundle-check --data "$SD_FSMIS_CHECK_DATA" --out "$WORK/run" \
        --device cpu --steps 2 --accumulation 1 --heldout-episodes 1 --validate-every 0 --no-validation \
        --checkpoint-every 2
fi
echo "    the frozen bundle passed its checks"
