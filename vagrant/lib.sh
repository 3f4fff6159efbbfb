# Shared by vagrant/build-box and vagrant/run-vm-tests (sourced, bash). Host side only.
# Everything cached goes under $RALPH_CACHE (default ~/.cache/ralph-systemd), never into the checkout.

VAGRANT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$VAGRANT_DIR/.." && pwd)
RALPH_CACHE=${RALPH_CACHE:-$HOME/.cache/ralph-systemd}
VM_CACHE=$RALPH_CACHE/vagrant
# Vagrant's own home for this project only (boxes, plugins' state): not the user's ~/.vagrant.d.
export VAGRANT_HOME=${VAGRANT_HOME:-$VM_CACHE/vagrant.d}
export VAGRANT_CHECKPOINT_DISABLE=1          # no update check: there is no network to ask
export VAGRANT_DEFAULT_PROVIDER=${VAGRANT_DEFAULT_PROVIDER:-libvirt}
export VAGRANT_CWD=$VAGRANT_DIR              # the Vagrantfile, wherever we are called from
export VAGRANT_NO_COLOR=${VAGRANT_NO_COLOR:-1}
LOCAL_BOX_PREFIX=ralph-systemd-bookworm-     # + recipe hash: the name build-box gives its box

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# Install the Debian packages that are missing (nothing is downloaded from anywhere else).
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# seconds since $1 (an epoch from `date +%s.%N`), one decimal
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
now() { date +%s.%N; }
