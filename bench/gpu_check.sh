#!/usr/bin/env bash
# The prepared GPU check (issue 19, part 2): one run on one GPU machine, at most 8 minutes, a table at the end.
#
#   bash bench/gpu_check.sh            # on a CUDA machine: real sizes (stages that need CUDA skip without it)
#   SMALL=1 bash bench/gpu_check.sh    # anywhere: tiny model, few slices/steps (CUDA if there, else the CPU)
#
# Everything after the script's name goes to bench/gpu_check.py (--small, --only, --skip, --budget ...).
# Python: $PYTHON, default python3. Packages the machine lacks travel as wheels in .whl/ (installed into
# $GPU_CHECK_SITE, default /tmp/site, put first on PYTHONPATH); a large binary package travels as
# .whl/NAME-site.tar.xz (the wheel's contents, xz-compressed: SimpleITK is 52 MB as a wheel, 28 MB so) and
# is unpacked there. The project itself needs no installation (gpu_check.py lays the package out in /tmp).
# Results: $OUT (default ./gpu-check-out): gpu_check.log (every stage's output) and results.json.
set -u
export GPU_CHECK_T0=${GPU_CHECK_T0:-$(date +%s)}
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
export OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT" "$SITE"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .whl/*.whl 2>&1 | grep -v "^WARNING: Target directory" || true
fi
for archive in .whl/*-site.tar.xz; do
    [ -e "$archive" ] || continue
    "$PY" - "$archive" "$SITE" <<'EOF'
import sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    tar.extractall(sys.argv[2], **kwargs)
EOF
done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
echo "# set-up (wheels into $SITE): $(($(date +%s) - GPU_CHECK_T0)) s"
if [ "${SMALL:-0}" = 1 ]; then set -- --small "$@"; fi
exec "$PY" bench/gpu_check.py "$@"
