#!/usr/bin/env bash
# Install a single-node SLURM (slurmctld + slurmd + slurmdbd) and munge from Debian's packages.
# Idempotent: returns at once when everything is already installed.
# MariaDB (the accounting store) is expected to be installed and running already; it is
# installed here too when missing, so a bare Debian 12 machine works.
set -euo pipefail

PKGS=(slurm-wlm slurmdbd munge mariadb-client)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || PKGS+=(mariadb-server)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install.sh: already installed (${PKGS[*]})"
    exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "install.sh: installing ${missing[*]}"
$SUDO apt-get update -qq
# Don't let the packages' maintainer scripts start daemons (no systemd here; start.sh starts them).
policy_created=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    policy_created=1
fi
trap '[ "$policy_created" -eq 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install.sh: done"
