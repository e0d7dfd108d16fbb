#!/bin/busybox sh
# Guest PID 1 of the MicroVM driver (written into the VM's initramfs at each start).
# Loads the virtio modules, mounts the sandbox's ext4 disk, brings up QEMU user networking,
# then runs the main process chrooted into the disk with the environment the driver wrote
# to /openshell/env (0600, removed once read). That file only sets positional parameters
# (NAME=VALUE words, the launcher set below, the command), all single-quoted: no value is
# evaluated or becomes a variable of this shell, so none can change what runs here. When the main process ends it prints the
# exit marker the driver reads back and powers the VM off. The disk is mounted with a 1 s
# commit interval so that a VM killed from outside loses at most about a second of writes.
B=/bin/busybox
PATH=/bin
$B mkdir -p /dev /proc /sys
$B mount -t devtmpfs dev /dev
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
# Without an exit marker the driver reports the VM as failed, with these lines.
fail() {
    echo "openshell-init: error: $*"
    $B sync
    $B reboot -f
}
for m in $($B cat /lib/modules/order); do
    $B insmod "/lib/modules/$m.ko" || fail "cannot load kernel module $m"
done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ $i -gt 200 ] && fail "no disk /dev/vda after 10 s"
    $B usleep 50000
done
$B mkdir -p /newroot
$B mount -t ext4 -o commit=1 /dev/vda /newroot || fail "cannot mount the root disk /dev/vda"
for d in dev proc sys run tmp; do $B mkdir -p "/newroot/$d"; done
$B mount -t devtmpfs dev /newroot/dev
$B mkdir -p /newroot/dev/pts /newroot/dev/shm
$B mount -t devpts devpts /newroot/dev/pts
$B mount -t proc proc /newroot/proc
$B mount -t sysfs sys /newroot/sys
$B mount -t tmpfs -o mode=0755 run /newroot/run
# The sandbox's credential: root-only on the guest's /run (never on its disk), for the
# supervisor alone; the workload runs as an unprivileged user.
$B mkdir -p /newroot/run/openshell
$B chmod 0700 /newroot/run/openshell
$B cp -a /openshell/credentials /newroot/run/openshell/credentials || fail "cannot install the sandbox credential"
$B rm -rf /openshell/credentials
$B ip link set lo up
$B ip link set eth0 up || fail "no network device eth0"
$B ip addr add 10.0.2.15/24 dev eth0
$B ip route add default via 10.0.2.2
[ -w /newroot/etc ] && echo "nameserver 10.0.2.3" >/newroot/etc/resolv.conf
$B hostname "${OPENSHELL_HOSTNAME:-sandbox}"
# Dirty pages reach the disk within about a second too (the defaults are 30 s).
echo 100 >/proc/sys/vm/dirty_expire_centisecs
echo 100 >/proc/sys/vm/dirty_writeback_centisecs
set -- $B chroot /newroot
. /openshell/env
$B rm -f /openshell/env
# The RTC gives the time at boot; the driver's clock is the fallback for a guest without it.
now=$($B date +%s)
[ "$now" -lt "$OPENSHELL_VM_EPOCH" ] && $B date -s "@$OPENSHELL_VM_EPOCH" >/dev/null
unset OPENSHELL_VM_EPOCH
echo "openshell-init: starting the main process"
cd /newroot
$B env "$@" </dev/null &
child=$!
# The driver asks for a clean stop by writing `stop` to the serial console (its QEMU
# socket): the main process gets SIGTERM, as in a container stop. No echo, so the request
# does not show up in the log.
$B stty -F /dev/ttyS0 -echo 2>/dev/null
(
    while IFS= read -r cmd; do
        [ "$cmd" = stop ] && $B kill -TERM "$child"
    done
) </dev/ttyS0 &
reader=$!
wait "$child"
code=$?
$B kill "$reader" 2>/dev/null
echo "openshell-init: main process exited with code $code"
$B sync
$B umount /newroot/run /newroot/dev/pts /newroot/dev /newroot/proc /newroot/sys 2>/dev/null
$B mount -o remount,ro /newroot 2>/dev/null
$B reboot -f
