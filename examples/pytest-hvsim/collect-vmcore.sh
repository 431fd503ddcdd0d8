#!/bin/sh
# A third party's dump collector, as many sites have one: copy /proc/vmcore
# of the capture kernel under ROOT to OUT, keep holes sparse, and give no
# memory back (the hypervisor keeps it reserved until someone releases it).
set -eu
ROOT=${1:?usage: collect-vmcore.sh ROOT OUT}
OUT=${2:?usage: collect-vmcore.sh ROOT OUT}
[ -r "$ROOT/proc/vmcore" ] || { echo "collect-vmcore: no dump waiting under $ROOT" >&2; exit 1; }
umask 077
cp --sparse=always "$ROOT/proc/vmcore" "$OUT.part"
chmod 600 "$OUT.part"
sync "$OUT.part"
mv "$OUT.part" "$OUT"
