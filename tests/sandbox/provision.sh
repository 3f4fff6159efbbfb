#!/bin/sh
# Provision a Debian 12 or 13 system (the test-bed container or the Vagrant VM) to run ralph-systemd's tests.
# Runs as root inside the guest. Idempotent: what is already there is left alone.
#   provision.sh USER SRC VENV
#   USER  unprivileged user that runs the tests (created with lingering if missing)
#   SRC   the project checkout inside the guest (installed editable, so host edits show up)
#   VENV  where the virtualenv goes (its bin/ is put first on PATH by the callers)
set -eu
user=${1:?user}; src=${2:?src}; venv=${3:?venv}

need=""
for pkg in systemd systemd-sysv dbus dbus-user-session libpam-systemd python3 python3-venv python3-dev \
           procps libsystemd-dev pkg-config gcc libc6-dev git; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
    echo "provision: installing$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $need
fi

if ! id "$user" >/dev/null 2>&1; then
    useradd -m -s /bin/bash "$user"
fi
mkdir -p /var/lib/systemd/linger
touch "/var/lib/systemd/linger/$user"     # = loginctl enable-linger: user@UID.service starts at boot

if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv --clear "$venv"      # --clear: a venv left half-made by an interrupted run is redone
fi
# Editable install: the checkout is read through a .pth file, so edits need no reinstall.
# (pystemd has no wheels: it is compiled here against libsystemd-dev.)
"$venv/bin/pip" install -q --disable-pip-version-check -e "$src[test]"
"$venv/bin/python" -c 'import pystemd, systemd.journal, tenacity, pytest, hypothesis, ralph_systemd' 
echo "provision: ok ($venv)"
