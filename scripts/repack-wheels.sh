#!/usr/bin/env bash
# After ../shared/device/fetch-wheels.sh: .wheels is ~60 MiB, too much beside a ~7 MiB tree in one
# 64 MiB device call. Re-store the next-largest wheels uncompressed and xz them, as fetch-wheels.sh
# does for the cu13 libs (.wheels/install.sh unpacks every *.whl.stored.xz): ~56 MiB.
set -euo pipefail
DEST=${1:-.wheels}
for W in "$DEST"/apache_tvm_ffi-*.whl "$DEST"/nvidia_cutlass_dsl_libs_base-*.whl \
         "$DEST"/nvidia_cutlass_dsl_libs_core-*.whl "$DEST"/torch_c_dlpack_ext-*.whl; do
  [ -f "$W" ] || continue
  python3 - "$W" "$W.stored" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zi, zipfile.ZipFile(sys.argv[2], "w", compression=zipfile.ZIP_STORED) as zo:
    for info in zi.infolist():
        ni = zipfile.ZipInfo(info.filename, date_time=info.date_time); ni.external_attr = info.external_attr
        zo.writestr(ni, zi.read(info))
PY
  xz -T2 -9e -c "$W.stored" > "$W.stored.xz" && rm "$W" "$W.stored"
done
du -sh "$DEST"
