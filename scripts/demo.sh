#!/bin/sh
# make demo: crash a simulated 4 GiB POWER6 LPAR, look at what the capture kernel
# offers, verify the hypervisor's saved data against ground truth, then give all
# memory back range by range from a shell until the LPAR is protected again.
set -eu
WORK="${HVDUMP_DEMO_DIR:-$(pwd)/demo-work}"
LPAR="$WORK/lpar-demo"
ROOT="$WORK/root"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() { hvsim umount "$ROOT" >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM

rm -rf "$WORK"
mkdir -p "$WORK"
chmod 700 "$WORK"

say "Create a 4 GiB big-endian POWER6 LPAR with 8 CPUs and boot it with dump support"
hvsim create "$LPAR" --memory 4G --cpus 8 --endian big --page-size 64K --seed 2026
hvsim boot "$LPAR"
hvsim status "$LPAR"

say "Crash it: the hypervisor saves low memory, registers and HPTEs, then the capture kernel boots"
hvsim crash "$LPAR"
hvsim status "$LPAR"

say "Mount the capture kernel's root with FUSE"
hvsim mount "$LPAR" "$ROOT"
ls -l "$ROOT/proc" "$ROOT/sys/kernel" "$ROOT/proc/device-tree/rtas"

say "The map: cat $ROOT/sys/kernel/release_region"
cat "$ROOT/sys/kernel/release_region"

say "The vmcore as the capture kernel offers it: readelf -h -l"
readelf -h -l "$ROOT/proc/vmcore" | sed -n '1,40p'

say "Copy the raw vmcore away and verify it against the crashed kernel's memory"
dd if="$ROOT/proc/vmcore" of="$WORK/vmcore.raw" bs=1M status=progress
chmod 600 "$WORK/vmcore.raw"
hvsim verify "$LPAR" "$WORK/vmcore.raw"

say "Verify the hypervisor's saved sections (low memory copy, registers, HPTEs) in place"
hvsim verify "$LPAR"

say "Give the memory back from a shell, one range at a time"
# Each line of the map is ADDR-SIZE; release the reserved area, then the scratch area.
python3 - "$ROOT/sys/kernel/release_region" <<'PY' > "$WORK/ranges"
import re, sys
text = open(sys.argv[1]).read()
pairs = [(int(a, 16), int(s, 16)) for a, s in re.findall(r"0x([0-9a-f]+)-0x([0-9a-f]+)", text)]
cpu, hpte, dump, reserved = pairs
chunk = 256 << 20
start, end = reserved[0], reserved[0] + reserved[1]
while start < end:
    size = min(chunk, end - start)
    print(f"{start:#x} {size:#x}")
    start += size
for addr, size in (cpu, hpte, dump):
    print(f"{addr:#x} {size:#x}")
PY
while read -r addr size; do
    echo "echo $addr $size > release_region"
    echo "$addr $size" > "$ROOT/sys/kernel/release_region"
done < "$WORK/ranges"

say "Everything released: the kernel re-registered and the LPAR is protected again"
hvsim status "$LPAR"
ls "$ROOT/sys/kernel"

say "Analyse the crashed kernel with stock drgn: release, panic message, crashed CPU's backtrace"
# Ground truth of the crash (what a perfect collector writes), and the kernel's debug info.
hvsim truth-core "$LPAR" "$WORK/truth.core"
drgn -q -c "$WORK/truth.core" -s "$(hvsim vmlinux "$LPAR")" -e '
from drgn.helpers.linux.printk import get_printk_records
print("release:", prog["init_uts_ns"].name.release.string_().decode())
print("panic:  ", get_printk_records()[-1].text.decode())
thread = prog.crashed_thread()
cpu = prog["panic_cpu"].counter.value_()
print(f"crashed: CPU {cpu}, PID {thread.tid} ({thread.name})")
print(thread.stack_trace())
'
say "Demo finished; files are in $WORK"
