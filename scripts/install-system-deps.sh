#!/bin/sh
# Installs the Debian packages hvdump's tests and demo use, only those missing.
# fuse3: FUSE capture roots; elfutils: eu-readelf; gdb-multiarch: register checks on
# our ppc64 cores; xxhash: xxhsum checks our XXH64 checksums; zstd/lz4: benchmark
# baselines; python3-venv: the project venv; gcc-powerpc64*-linux-gnu: rebuilding
# hvsim's kernel image (hvsim/kernel_image); lib*-dev: the kdump page codecs the
# C extension links (native/hvcodec.c); makedumpfile, crash: the reference tools
# hvdump convert is compared with and checked against (bench/vs_makedumpfile.py);
# qemu-system-ppc, cpio: the real-kernel suite boots Debian's ppc64el kernel
# (make test-real, tests/real_kernel.py); libc6-dev-ppc64el-cross, flex, bison,
# bc, libelf-dev, libssl-dev: building the fadump guest kernel and cross-building
# hvdump's C extension for it, e2fsprogs: its dump disk (make test-firmware,
# tests/firmware_parts.py); systemd: systemd-analyze verify checks the
# capture-boot unit (hvdump service).
set -eu
PKGS="fuse3 elfutils binutils gdb-multiarch zstd lz4 xxhash python3-venv python3-libkdumpfile gcc-powerpc64-linux-gnu gcc-powerpc64le-linux-gnu openssh-server openssh-client rsync liblzo2-dev libdeflate-dev libsnappy-dev libzstd-dev makedumpfile crash qemu-system-ppc cpio libc6-dev-ppc64el-cross flex bison bc libelf-dev libssl-dev e2fsprogs systemd"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "hvdump: missing Debian packages:$missing; install them as root (apt-get install$missing)" >&2
    exit 1
fi
echo "hvdump: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
