#!/bin/sh
# packaging/dsad.service against systemd-analyze: its exposure level (security --offline) is at
# most 1.0; `verify` finds nothing but a missing /usr/sbin/dsad when dsad is not installed; and
# the unit's SystemCallFilter= allows every system call of tests/packaging/dsad-syscalls.txt.
# Usage: unit-test.sh [SOURCE_DIR]. Exit 0 pass, 1 fail, 77 skipped (no systemd-analyze, or one
# older than systemd 250, which brought security --offline= and --threshold=).
set -u
set -f

max_exposure=1.0

skip() {
        echo "unit-test: SKIP: $*"
        exit 77
}
command -v systemd-analyze >/dev/null 2>&1 || skip "systemd-analyze is not installed"
# "systemd 252 (252.39-1~deb12u2)"
version=$(systemd-analyze --version 2>/dev/null | awk 'NR == 1 { print $2 }')
case $version in
'' | *[!0-9]*) skip "cannot read the version of systemd-analyze ('$version')" ;;
esac
[ "$version" -ge 250 ] || skip "systemd-analyze $version has no security --offline= (needs 250)"
src=${1:-${DSA_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}}
unit=$src/packaging/dsad.service
list=$src/tests/packaging/dsad-syscalls.txt
if ! [ -r "$unit" ] || ! [ -r "$list" ]; then
        echo "unit-test: FAIL: $unit or $list is missing"
        exit 1
fi

export LC_ALL=C SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat SYSTEMD_LOG_COLOR=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# --- 1. Exposure. --threshold= counts in tenths of the level printed (10 = 1.0). Under LC_ALL=C
# the table marks exposed settings with "-" (else "✗").
systemd-analyze security --offline=true --threshold=10 --no-pager "$unit" >"$tmp/security" 2>&1
rc=$?
level=$(sed -n 's/.*Overall exposure level for dsad\.service: \([0-9.]*\).*/\1/p' "$tmp/security")
if [ -z "$level" ]; then
        echo "unit-test: FAIL: systemd-analyze security printed no exposure level:"
        cat "$tmp/security"
        fail=1
elif [ "$rc" -ne 0 ] || awk -v l="$level" -v m="$max_exposure" 'BEGIN { exit !(l + 0 > m + 0) }'; then
        echo "unit-test: FAIL: exposure level $level is above $max_exposure (rc $rc); exposed:"
        awk '$1 == "-" || $1 == "✗"' "$tmp/security"
        fail=1
else
        echo "unit-test: ok: exposure level $level (at most $max_exposure); still exposed:"
        awk '$1 == "-" || $1 == "✗" { print "    " $2 }' "$tmp/security"
fi

# --- 2. verify. Documentation= is not checked (--man=no: the man pages are not installed here).
systemd-analyze verify --man=no "$unit" >"$tmp/verify" 2>&1
rc=$?
cp "$tmp/verify" "$tmp/verify-rest"
if [ ! -x /usr/sbin/dsad ]; then
        grep -v '^dsad\.service: Command /usr/sbin/dsad is not executable: No such file or directory$' \
                "$tmp/verify" >"$tmp/verify-rest"
fi
if [ -s "$tmp/verify-rest" ]; then
        echo "unit-test: FAIL: systemd-analyze verify (rc $rc):"
        cat "$tmp/verify-rest"
        fail=1
elif [ "$rc" -ne 0 ] && ! [ -s "$tmp/verify" ]; then
        echo "unit-test: FAIL: systemd-analyze verify failed (rc $rc) and said nothing"
        fail=1
else
        echo "unit-test: ok: systemd-analyze verify$([ -x /usr/sbin/dsad ] || echo ' (but for the missing /usr/sbin/dsad)')"
fi

# --- 3. System calls.
# expand ITEM...: the system calls the names and @groups stand for, one a line (groups nest).
expand() {
        todo="$*"
        seen=
        while [ -n "$todo" ]; do
                # shellcheck disable=SC2086 # a list of words (set -f: no globbing)
                set -- $todo
                item=$1
                shift
                todo="$*"
                case $item in
                @*)
                        case " $seen " in *" $item "*) continue ;; esac
                        seen="$seen $item"
                        members=$(systemd-analyze syscall-filter --no-pager "$item" 2>/dev/null |
                                awk 'NR > 1 && $1 !~ /^#/ && NF { print $1 }')
                        if [ -z "$members" ]; then
                                echo "unit-test: unknown system call group $item" >&2
                                return 1
                        fi
                        todo="$todo $members"
                        ;;
                *) echo "$item" ;;
                esac
        done
}

# The assignments in order, as systemd.exec(5) merges them: an empty one resets the filter; the
# first one decides the mode: a plain list is an allow list (and brings @default with it), a
# "~" list a deny list. Later lines of the mode's own kind add to the set, lines of the other
# kind take their calls out of it. ":ERRNO" suffixes only pick the error returned.
mode=
: >"$tmp/set"
sed -n '/^\[Service\]/,/^\[/ s/^[[:space:]]*SystemCallFilter[[:space:]]*=[[:space:]]*//p' "$unit" >"$tmp/assignments"
while IFS= read -r value; do
        value=$(echo "$value" | sed 's/[[:space:]]*$//')
        if [ -z "$value" ]; then
                mode=
                : >"$tmp/set"
                continue
        fi
        invert=no
        case $value in "~"*) invert=yes; value=${value#\~} ;; esac
        if [ -z "$mode" ]; then
                if [ $invert = yes ]; then
                        mode=deny
                else
                        mode=allow
                        expand @default >"$tmp/set" || exit 1
                fi
        fi
        items=$(for w in $value; do echo "${w%%:*}"; done)
        # shellcheck disable=SC2086 # a list of words (set -f: no globbing)
        expand $items >"$tmp/names" || exit 1
        sort -u -o "$tmp/names" "$tmp/names"
        if { [ $invert = yes ] && [ $mode = allow ]; } || { [ $invert = no ] && [ $mode = deny ]; }; then
                grep -vxF -f "$tmp/names" "$tmp/set" >"$tmp/next"
        else
                cat "$tmp/set" "$tmp/names" >"$tmp/next"
        fi
        sort -u "$tmp/next" >"$tmp/set"
done <"$tmp/assignments"

# Settings that install a system call filter of their own (systemd.exec(5)), by name only;
# those that look at arguments (MemoryDenyWriteExecute=, RestrictNamespaces=, ...) are not.
: >"$tmp/implied"
setting() {
        sed -n "/^\[Service\]/,/^\[/ s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$unit" | tail -n 1
}
is_yes() {
        case $(setting "$1") in yes | true | on | 1) return 0 ;; *) return 1 ;; esac
}
{
        ! is_yes ProtectClock || expand @clock
        ! is_yes PrivateDevices || expand @raw-io
        ! is_yes ProtectKernelModules || expand @module
        ! is_yes ProtectKernelLogs || echo syslog
        ! is_yes ProtectHostname || printf 'sethostname\nsetdomainname\n'
} >"$tmp/implied" || exit 1

allowed() {
        if grep -qxF "$1" "$tmp/implied"; then
                return 1
        fi
        case $mode in
        allow) grep -qxF "$1" "$tmp/set" ;;
        deny) ! grep -qxF "$1" "$tmp/set" ;;
        *) return 0 ;;
        esac
}

if [ "$mode" != allow ]; then
        echo "unit-test: FAIL: dsad.service has no SystemCallFilter= allow list (mode '${mode:-none}')"
        fail=1
fi
n=0
bad=
refused=
while IFS= read -r line; do
        name=$(echo "$line" | sed 's/#.*//; s/[[:space:]]//g')
        [ -n "$name" ] || continue
        case $name in
        "!"*)
                name=${name#!}
                if allowed "$name"; then
                        echo "unit-test: note: $name is listed as refused but the filter allows it"
                else
                        refused="$refused $name"
                fi
                ;;
        *)
                n=$((n + 1))
                allowed "$name" || bad="$bad $name"
                ;;
        esac
done <"$list"
if [ -n "$bad" ]; then
        echo "unit-test: FAIL: SystemCallFilter= refuses system calls dsad makes:$bad"
        fail=1
else
        echo "unit-test: ok: SystemCallFilter= ($(wc -l <"$tmp/set") calls allowed) allows all $n calls of dsad-syscalls.txt;" \
                "refuses on purpose:${refused:- none}"
fi

exit $fail
