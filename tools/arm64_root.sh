# Shared by tools/arm64-check and tools/arm64-cost (sourced, not run).
#
# in_root CMD...: run CMD inside the arm64 root $ROOT (set by the caller, with $CACHE, $QEMU_CPU,
# $CHROOT_TIMEOUT and the NICE array). A private mount namespace holds the mounts, so they vanish
# when the command ends (even on failure or ^C). /sys: only cpuN/ and `online` from the host (see
# "Traps" in tools/arm64-check). Other settings: `in_root /usr/bin/env VAR=value CMD...`.
in_root() {
    timeout "$CHROOT_TIMEOUT" unshare --mount --propagation private -- "${NICE[@]}" bash -euc '
        root=$1 wheels=$2; shift 2
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs -o size=2g tmpfs "$root/tmp"
        if [[ -d $wheels ]]; then  # absent on a clean run until step 2 has downloaded them
            mkdir -p "$root/opt/wheels" && mount --bind -o ro "$wheels" "$root/opt/wheels"
        fi
        mount -t tmpfs -o size=1m sysfs-min "$root/sys"
        for src in /sys/devices/system/cpu/cpu[0-9]* /sys/devices/system/cpu/online; do
            if [[ -d $src ]]; then mkdir -p "$root$src"; else mkdir -p "$(dirname "$root$src")"; touch "$root$src"; fi
            mount --bind -o ro "$src" "$root$src"
        done
        exec chroot "$root" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
            QEMU_CPU="$QEMU_CPU" PYTHONDONTWRITEBYTECODE=1 SFPN_SHARED=/opt/shared \
            SFPN_EDGE_HOME=/tmp/sfpn-home OMP_NUM_THREADS=1 "$@"
    ' _ "$ROOT" "$CACHE/wheels" "$@"
}

