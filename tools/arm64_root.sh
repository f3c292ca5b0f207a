# Shared by tools/arm64-check and tools/arm64-cost (sourced, not run).
#
# in_root CMD...: run CMD inside the arm64 root $ROOT (set by the caller, with $CACHE, $QEMU_CPU,
# $CHROOT_TIMEOUT and the NICE array). A private mount namespace holds the mounts, so they vanish
# when the command ends (even on failure or ^C). /sys: only cpuN/ and `online` from the host (see
# "Traps" in tools/arm64-check), plus `possible` and `present` lists for them; /proc/cpuinfo: an
# ARM one for $QEMU_CPU (QEMU 7.2 shows the x86 host's), so the cpuinfo library that ONNX Runtime
# and XNNPACK use initialises (without it XNNPACK is not applied at all). Other settings:
# `in_root /usr/bin/env VAR=value CMD...`.
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
        cpus=$(ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l)
        echo "0-$((cpus - 1))" >"$root/sys/devices/system/cpu/possible"
        cp "$root/sys/devices/system/cpu/possible" "$root/sys/devices/system/cpu/present"
        case $QEMU_CPU in  # MIDR fields and HWCAP names as a real core of that kind reports them
            cortex-a72) part=0xd08 variant=0x0 features="fp asimd evtstrm crc32 cpuid" ;;
            *) part=0xd0c variant=0x3 features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs" ;;
        esac
        for ((n = 0; n < cpus; n++)); do
            printf "processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: 1\n\n" \
                "$n" "$features" "$variant" "$part"
        done >"$root/tmp/.cpuinfo"
        mount --bind -o ro "$root/tmp/.cpuinfo" "$root/proc/cpuinfo"
        exec chroot "$root" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
            QEMU_CPU="$QEMU_CPU" PYTHONDONTWRITEBYTECODE=1 SFPN_SHARED=/opt/shared \
            SFPN_EDGE_HOME=/tmp/sfpn-home OMP_NUM_THREADS=1 "$@"
    ' _ "$ROOT" "$CACHE/wheels" "$@"
}

