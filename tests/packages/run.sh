#!/usr/bin/env bash
# The package check (tools/need-packages.sh) against a fake dpkg-query, apt-get and id on
# PATH: nothing is installed on the host. As root a missing package is installed (one
# `apt-get update`, then exactly the missing packages); as a user it is named with the exact
# `sudo apt-get install` line and nothing is installed.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work=$(mktemp -d /tmp/gridos-packages.XXXXXX)
trap 'rm -rf "$work"' EXIT
bin="$work/bin"
mkdir -p "$bin"

# A package list of our own, so the test does not depend on the real one's contents.
cat >"$work/packages.txt" <<'LIST'
# group packages
image   alpha beta
run     gamma
test    beta delta
LIST

# Fake dpkg-query: a package is installed when its name is a line of $work/installed.
cat >"$bin/dpkg-query" <<'FAKE'
#!/usr/bin/env bash
pkg="${!#}"
if grep -qx "$pkg" "$FAKE_STATE/installed" 2>/dev/null; then
    printf 'install ok installed'
else
    echo "dpkg-query: no packages found matching $pkg" >&2
    exit 1
fi
FAKE
# Fake apt-get: logs its calls; `install` marks the packages installed.
cat >"$bin/apt-get" <<'FAKE'
#!/usr/bin/env bash
echo "apt-get $*" >>"$FAKE_STATE/apt.log"
if [ "$1" = install ]; then
    for a in "$@"; do
        case "$a" in install|-*) ;; *) echo "$a" >>"$FAKE_STATE/installed" ;; esac
    done
fi
FAKE
cat >"$bin/id" <<'FAKE'
#!/usr/bin/env bash
echo "$FAKE_UID"
FAKE
chmod +x "$bin"/*

check() { # check UID GROUP... ; sets out and rc
    set +e
    out=$(PATH="$bin:$PATH" FAKE_STATE="$work" FAKE_UID="$1" \
        GRIDOS_PACKAGES_FILE="$work/packages.txt" "$repo/tools/need-packages.sh" "${@:2}" 2>&1)
    rc=$?
    set -e
}
fail() { echo "FAIL: $*"; echo "--- output:"; echo "$out"; echo "--- apt.log:"; cat "$work/apt.log" 2>/dev/null; exit 1; }

# 1. Everything installed: nothing happens.
printf '%s\n' alpha beta gamma delta >"$work/installed"
check 1000 image run test
[ "$rc" -eq 0 ] || fail "all installed, rc=$rc"
[ ! -e "$work/apt.log" ] || fail "apt-get ran with everything installed"

# 2. A user with missing packages: named, with the exact command, nothing installed.
printf '%s\n' alpha >"$work/installed"
check 1000 image test
[ "$rc" -eq 1 ] || fail "missing as user, rc=$rc"
echo "$out" | grep -qx "    sudo apt-get install --no-install-recommends beta delta" ||
    fail "no exact sudo line (each package once, in order)"
[ ! -e "$work/apt.log" ] || fail "apt-get ran as a user"

# 3. Root with missing packages: one update, then exactly the missing ones.
check 0 image run test
[ "$rc" -eq 0 ] || fail "missing as root, rc=$rc"
[ "$(grep -c '^apt-get update' "$work/apt.log")" -eq 1 ] || fail "not exactly one apt-get update"
grep -qx "apt-get install -y -q --no-install-recommends beta gamma delta" "$work/apt.log" ||
    fail "apt-get install did not get exactly the missing packages"
# ... after which the check passes without calling apt-get again.
rm "$work/apt.log"
check 0 image run test
[ "$rc" -eq 0 ] && [ ! -e "$work/apt.log" ] || fail "second check after install"

# 4. An unknown group is an error, not a silent pass.
check 0 nosuchgroup
[ "$rc" -eq 2 ] || fail "unknown group, rc=$rc"

echo "package check: 4 cases passed"
