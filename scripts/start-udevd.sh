#!/usr/bin/env bash
# Give this machine the stable names /dev/replengine/<resource>: install udev/65-replengine.rules
# as a runtime rule (/run/udev/rules.d, gone at reboot; the packages install it in
# /usr/lib/udev/rules.d) unless an installed copy is there, and start systemd-udevd when it is
# not running (machines and CI runs without systemd). Used by the demo and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
RULE=udev/65-replengine.rules
if [ "$(dpkg-query -W -f='${db:Status-Status}' udev 2>/dev/null || true)" != installed ]; then
    cand=$(apt-cache policy udev 2>/dev/null | awk '/Candidate:/{print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then apt-get update -qq; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 udev >/dev/null
fi
if ! cmp -s "$RULE" /usr/lib/udev/rules.d/65-replengine.rules; then
    mkdir -p /run/udev/rules.d
    cmp -s "$RULE" /run/udev/rules.d/65-replengine.rules ||
        install -m 0644 "$RULE" /run/udev/rules.d/65-replengine.rules
fi
if ! udevadm control --ping 2>/dev/null; then
    /lib/systemd/systemd-udevd --daemon
    udevadm control --ping --timeout=30
fi
udevadm control --reload
