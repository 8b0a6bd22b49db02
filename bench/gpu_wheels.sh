#!/usr/bin/env bash
# Build .whl/ for the GPU check on a host without PyPI (the lent device machine: Python 3.12, x86_64,
# torch cu130). Run here, where pip works, in the repository root:  bash bench/gpu_wheels.sh
# Downloads bench/gpu-wheels.txt's pins (a pure-Python sdist is built into a wheel), keeps only
# bitsandbytes' CUDA 13.0 and CPU libraries and pulp's Linux x86_64 solver, and recompresses every wheel
# with LZMA (pip reads it): about 46 MiB, under the 64 MiB a device call carries. Then carry `.whl`
# and run `bash bench/gpu_check.sh`, which installs them. Takes a few minutes (the LZMA pass).
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-$(command -v python3)}
download=$(mktemp -d)
platforms=""
for n in 28 27 24 17 31 34 35; do platforms="$platforms --platform manylinux_2_${n}_x86_64"; done
platforms="$platforms --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
grep -v '^#' bench/gpu-wheels.txt | while read -r requirement; do
    [ -n "$requirement" ] || continue
    "$python_bin" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $platforms -d "$download" "$requirement" 2>/dev/null \
      || "$python_bin" -m pip wheel -q --no-deps -w "$download" "$requirement"
done
rm -rf .whl && mkdir .whl
"$python_bin" - "$download" .whl <<'PY'
import re, sys, zipfile
from pathlib import Path

source, target = Path(sys.argv[1]), Path(sys.argv[2])
# The device's torch is built for CUDA 13.0; pulp's solver is only used by Snakemake's ILP scheduler.
drop = [re.compile(r"bitsandbytes/libbitsandbytes_(cuda(?!130)|rocm|xpu)"),
        re.compile(r"pulp/solverdir/cbc/(win|osx|linux/(i32|arm64))/"), re.compile(r"pulp/tests/")]
for wheel in sorted(source.glob("*.whl")):
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(target / wheel.name, "w", zipfile.ZIP_LZMA) as zout:
        for info in zin.infolist():
            if not any(pattern.search(info.filename) for pattern in drop):
                entry = zipfile.ZipInfo(info.filename, info.date_time)
                entry.external_attr = info.external_attr
                zout.writestr(entry, zin.read(info), compress_type=zipfile.ZIP_LZMA)
total = sum(path.stat().st_size for path in target.glob("*.whl"))
print(f"gpu_wheels: {len(list(target.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {target}")
PY
rm -rf "$download"
