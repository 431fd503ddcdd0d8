#!/bin/sh
# make demo: the whole pipeline on simulated POWER6 LPARs.
#  1. One LPAR by hand: crash it, look at what the capture kernel offers, collect
#     the dump with progressive release, verify it, and analyse it with drgn.
#  2. The main job: a fleet of 8 LPARs, collect-dumps.yml with Ansible, the
#     operator's summary, and one archived dump opened in drgn.
set -eu
WORK="${HVDUMP_DEMO_DIR:-$(pwd)/demo-work}"
LPAR="$WORK/lpar-demo"
ROOT="$WORK/root"
FLEET="$WORK/fleet"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    hvsim umount "$ROOT" >/dev/null 2>&1 || true
    [ -d "$FLEET" ] && hvsim fleet down --dir "$FLEET" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
first_look='
from drgn.helpers.linux.printk import get_printk_records
print("release:", prog["init_uts_ns"].name.release.string_().decode())
print("panic:  ", get_printk_records()[-1].text.decode())
thread = prog.crashed_thread()
cpu = prog["panic_cpu"].counter.value_()
print(f"crashed: CPU {cpu}, PID {thread.tid} ({thread.name})")
print(thread.stack_trace())
'

rm -rf "$WORK"
mkdir -p "$WORK"
chmod 700 "$WORK"

say "1. Create a 4 GiB big-endian POWER6 LPAR with 8 CPUs, boot it with dump support, crash it"
hvsim create "$LPAR" --memory 4G --cpus 8 --endian big --page-size 64K --seed 2026
hvsim boot "$LPAR"
hvsim crash "$LPAR" --scenario oops
hvsim status "$LPAR"

say "Mount the capture kernel's root with FUSE"
hvsim mount "$LPAR" "$ROOT"
ls -l "$ROOT/proc" "$ROOT/sys/kernel" "$ROOT/proc/device-tree/rtas"

say "The map: cat $ROOT/sys/kernel/release_region"
cat "$ROOT/sys/kernel/release_region"

say "The vmcore as the capture kernel offers it: readelf -l"
readelf -l "$ROOT/proc/vmcore" | sed -n '1,20p'

say "What hvdump sees under that root"
hvdump status --root "$ROOT"

say "Verify the hypervisor's saved sections (low memory copy, registers, HPTEs) against ground truth"
hvsim verify "$LPAR"

say "Triage at once: drgn on the live /proc/vmcore (the hvdump plugin maps the saved low memory back)"
drgn -q -c "$ROOT/proc/vmcore" -s "$(hvsim vmlinux "$LPAR")" -e "$first_look
from drgn.commands import run_command
run_command(prog, 'hvdump')
run_command(prog, 'hvdump regions')"

say "Collect: kdump-compressed with zstd, memory released as soon as each range is durable"
hvdump collect --root "$ROOT" --output "$WORK/dump" --threads 2 --no-progress
ls -l "$WORK/dump"
hvdump verify "$WORK/dump"
hvsim verify "$LPAR" "$WORK/dump/dump.kdump"   # page by page against ground truth

say "Everything released: the kernel re-registered and the LPAR is protected again"
hvsim status "$LPAR" | sed -n '1,6p'
ls "$ROOT/sys/kernel"

say "Analyse the collected dump with drgn: release, panic message, crashed CPU's backtrace"
drgn -q -c "$WORK/dump/dump.kdump" -s "$(hvsim vmlinux "$LPAR")" -e "$first_look"
hvsim umount "$ROOT"

say "2. A fleet of 8 LPARs (some crashed, some healthy, one without firmware support)"
hvsim fleet up --count 8 --dir "$FLEET" --seed 1

say "ansible-playbook playbooks/collect-dumps.yml: collect, release, archive and report"
ansible-playbook playbooks/collect-dumps.yml -i "$FLEET/inventory.yml" \
    -e "{\"hvdump_archive_target\": {\"type\": \"dir\", \"path\": \"$WORK/archive\"}}" \
    -e "hvdump_archive_remote_hvdump=$(command -v hvdump)" \
    -e "hvdump_report_file=$WORK/report.json" | sed -n '/PLAY \[Report\]/,$p'

say "One archived dump, opened in drgn"
set -- $(python3 - "$WORK/report.json" "$FLEET/inventory.yml" <<'PY'
import json, sys
import yaml
report = json.load(open(sys.argv[1]))["hosts"]
hosts = yaml.safe_load(open(sys.argv[2]))["all"]["children"]
lpars = {name: vars_["hvsim_lpar"] for group in hosts.values() for name, vars_ in group["hosts"].items()}
name, host = next((n, h) for n, h in sorted(report.items()) if h and h.get("status") == "collected")
print(host["archive"][0] + "/dump.kdump", lpars[name], name)
PY
)
echo "drgn -c $1 ($3)"
drgn -q -c "$1" -s "$(hvsim vmlinux "$2")" -e "$first_look"
hvsim fleet down --dir "$FLEET"
say "Demo finished; files are in $WORK"
