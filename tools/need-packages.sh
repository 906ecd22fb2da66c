#!/usr/bin/env bash
# need-packages.sh GROUP... : makes sure the Debian packages of the named groups (image, run,
# test; see tools/packages.txt) are installed. As root, installs what is missing (one
# `apt-get update`, then `apt-get install --no-install-recommends`); otherwise names the
# missing packages and prints the exact command to run, and fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
list="${GRIDOS_PACKAGES_FILE:-$here/packages.txt}"

if [ "$#" -eq 0 ]; then
    echo "usage: $0 GROUP... (groups: $(awk '!/^#/ && NF {printf "%s ", $1}' "$list"))" >&2
    exit 2
fi

wanted=()
for group in "$@"; do
    line=$(awk -v g="$group" '!/^#/ && $1 == g' "$list")
    if [ -z "$line" ]; then
        echo "need-packages: no group '$group' in $list" >&2
        exit 2
    fi
    read -r -a pkgs <<<"${line#* }"
    wanted+=("${pkgs[@]}")
done

# The wanted packages that are not installed, each once, in the order first asked for.
find_missing() {
    missing=()
    for p in "${wanted[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        case "$status" in
            "install ok installed") ;;
            *) missing+=("$p") ;;
        esac
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
    fi
}

find_missing
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "gridos needs these Debian packages, which are not installed: ${missing[*]}" >&2
    echo "install them with:" >&2
    echo "    sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "installing missing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

# Installing can remove a wanted package that was there: a machine with a newer qemu-utils
# from backports loses it when Debian 12's qemu-system-x86 comes in. Those are installed
# again, at the version that fits the rest.
find_missing
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing again what the first install removed: ${missing[*]}" >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    find_missing
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "need-packages: still not installed: ${missing[*]}" >&2
        exit 1
    fi
fi
