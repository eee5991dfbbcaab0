#!/bin/sh
# /init of the udpmapsync test VM (busybox ash). vmtest writes /vmtest/config
# (VMTEST_MARK, VMTEST_MODULES, VMTEST_VERBOSE) and /vmtest/run (the command) next to it.
# Everything printed here reaches the host through the serial console; the
# host reads the command's exit status from the "$VMTEST_MARK exit N" line.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
. /vmtest/config
echo "$VMTEST_MARK start"

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /tmp stays on the initramfs (itself a tmpfs): the command's working
# directory may be below it, as it is for go test's own temporary packages.
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ln -s /proc/self/fd /dev/fd

# Keep kernel messages off the console unless asked for (the host filters
# them from the command's output either way); dmesg still has them.
[ "$VMTEST_VERBOSE" = true ] || echo 1 >/proc/sys/kernel/printk
for m in $VMTEST_MODULES; do
	insmod "$m" || echo "vmtest: insmod $m failed"
done
ip link set lo up

/bin/sh /vmtest/run </dev/null
echo "$VMTEST_MARK exit $?"
poweroff -f
