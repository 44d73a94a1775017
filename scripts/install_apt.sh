#!/usr/bin/env bash
# Install the Debian packages listed in apt-packages.txt that are missing.
# Runs apt-get only when something is missing; without root or apt it prints what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < apt-packages.txt
[[ ${#missing[@]} -eq 0 ]] && exit 0
if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    echo "install_apt: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    echo "install_apt: please install these system packages yourself: ${missing[*]}" >&2
    echo "install_apt: (the sections that need them are skipped and say so)" >&2
fi
