#!/bin/sh
# The installed packages, end to end: builds them (scripts/package.sh, .debs and RPMs; --no-build reuses
# build-pkg/deb/), checks each .deb's contents, installs them with apt-get, runs dsad on the
# system bus as user dsad (the real bus when one answers, else a dbus-daemon --system of our
# own), and drives it as an unprivileged user and as root through dsactl. Everything it made
# is undone at the end, on failure too: dsad stopped, our bus stopped, packages purged, the
# test user (and the dsad account, when it did not exist before) removed.
#   --no-build       use the packages in build-pkg/deb/
#   --no-activation  start dsad with runuser instead of D-Bus activation
# Root only. Exit status: 0 pass, 1 fail, 77 skipped (not root, no apt/dpkg).
# shellcheck disable=SC2317 # cleanup runs from the EXIT trap
# shellcheck disable=SC2154 # deb_* are set through eval
set -u

root_dir=$(cd "$(dirname "$0")/../.." && pwd)
build=1
activation=1
for a in "$@"; do
        case $a in
        --no-build) build=0 ;;
        --no-activation) activation=0 ;;
        *) echo "install-test: unknown option '$a'" >&2; exit 2 ;;
        esac
done
if [ "$(id -u)" -ne 0 ]; then
        echo "install-test: SKIP: needs root (installs packages, adds users, runs a system bus)"
        exit 77
fi
for t in apt-get dpkg dpkg-deb; do
        command -v $t >/dev/null 2>&1 || { echo "install-test: SKIP: no $t"; exit 77; }
done

debdir=$root_dir/build-pkg/deb
ci_user=dsa-ci
text="a gorgeous, witty, seductive movie."
failed=0
tmp=$(mktemp -d /tmp/dsa-install-test.XXXXXX)
chmod 0755 "$tmp"
bus_pid=""      # the dbus-daemon we started
dsad_pid=""     # the dsad we started (or that our first call activated)
runuser_pid=""
had_dsad_user=0
getent passwd dsad >/dev/null && had_dsad_user=1
had_ci_user=0
getent passwd $ci_user >/dev/null && had_ci_user=1
installed=0

step() { echo "== $*"; }
ok() { echo "   ok: $*"; }
bad() { echo "   FAIL: $*"; failed=1; }

bus_call() { # METHOD ARGS...: a call to the bus driver on the system bus
        m=$1
        shift
        dbus-send --system --print-reply=literal --dest=org.freedesktop.DBus /org/freedesktop/DBus \
                "org.freedesktop.DBus.$m" "$@" 2>/dev/null
}
owner_pid() { # NAME: the pid owning NAME on the system bus, or nothing
        bus_call GetConnectionUnixProcessID "string:$1" | awk '{print $2}'
}

cleanup() {
        trap - EXIT INT TERM
        step "cleanup"
        if [ -z "$dsad_pid" ]; then
                dsad_pid=$(owner_pid org.dsa.Daemon1)
                # Only a dsad this test caused: ours when we run the bus, or one we activated.
                [ -n "$bus_pid" ] || [ "${activated:-0}" -eq 1 ] || dsad_pid=""
        fi
        if [ -n "$dsad_pid" ] && kill -0 "$dsad_pid" 2>/dev/null; then
                kill -TERM "$dsad_pid"
                i=0
                while kill -0 "$dsad_pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
                if kill -0 "$dsad_pid" 2>/dev/null; then
                        bad "dsad (pid $dsad_pid) still runs 10 s after SIGTERM"
                        kill -KILL "$dsad_pid" 2>/dev/null
                else
                        echo "   dsad (pid $dsad_pid) stopped on SIGTERM"
                fi
        fi
        [ -z "$runuser_pid" ] || wait "$runuser_pid" 2>/dev/null
        if [ -n "$bus_pid" ]; then
                # polkitd, when our bus activated it, goes with our bus.
                pk=$(owner_pid org.freedesktop.PolicyKit1)
                kill -TERM "$bus_pid" 2>/dev/null
                [ -z "$pk" ] || kill -TERM "$pk" 2>/dev/null
                i=0
                while kill -0 "$bus_pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
                rm -f /run/dbus/pid /run/dbus/system_bus_socket
                echo "   our dbus-daemon (pid $bus_pid) stopped"
        fi
        if [ $installed -eq 1 ]; then
                DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq dsad dsactl libdsa0 libdsa-dev \
                        >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log"; bad "apt-get purge"; }
                for p in dsad dsactl libdsa0 libdsa-dev; do
                        if dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -q 'ok installed\|config-files'; then
                                bad "$p is still installed after purge"
                        fi
                done
                [ ! -e /var/lib/dsa ] || bad "/var/lib/dsa is left after purge: $(ls -A /var/lib/dsa)"
                echo "   packages purged"
                dpkg-query -W -f='${Package} ${Status}\n' | awk '/ installed$/ { print $1 }' | sort >"$tmp/after.txt"
                pulled=$(comm -13 "$tmp/before.txt" "$tmp/after.txt" | tr '\n' ' ')
                if [ -n "$pulled" ]; then
                        # shellcheck disable=SC2086 # a list of package names
                        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq $pulled >"$tmp/purge2.log" 2>&1 ||
                                { cat "$tmp/purge2.log"; bad "apt-get purge of what the install pulled in"; }
                        echo "   purged what the install pulled in: $pulled"
                fi
        fi
        [ $had_ci_user -eq 1 ] || userdel -r $ci_user 2>/dev/null
        if [ $had_dsad_user -eq 0 ] && getent passwd dsad >/dev/null; then
                userdel dsad 2>/dev/null
                getent group dsad >/dev/null && groupdel dsad 2>/dev/null
                echo "   the dsad account removed (the test made it)"
        fi
        rm -rf "$tmp"
        if [ $failed -eq 0 ]; then
                echo "install-test: PASS"
                exit 0
        fi
        echo "install-test: FAIL"
        exit 1
}
trap cleanup EXIT
trap 'failed=1; exit 1' INT TERM

# --- packages
if [ $build -eq 1 ]; then
        # Both formats, so CI proves the spec builds too; only the .debs are installed here.
        step "scripts/package.sh"
        "$root_dir/scripts/package.sh" || { bad "package.sh"; exit 1; }
fi
step "packages in $debdir"
for p in dsad dsactl libdsa0 libdsa-dev; do
        f=$(ls "$debdir"/${p}_*.deb 2>/dev/null | head -n 1)
        [ -n "$f" ] || { bad "no ${p}_*.deb (run scripts/package.sh or drop --no-build)"; exit 1; }
        eval "deb_$(echo $p | tr - _)=\$f"
done
if [ $build -eq 0 ]; then
        newest=$(find "$root_dir/packaging" "$root_dir/debian" "$root_dir/daemon" "$root_dir/cli" \
                "$root_dir/libclient" -newer "$deb_dsad" -type f 2>/dev/null | head -n 3)
        [ -z "$newest" ] || echo "   note: sources newer than the packages: $newest"
fi

# contents DEB PATH...: every PATH is in DEB.
contents() {
        deb=$1
        shift
        dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|; s|/$||' >"$tmp/contents"
        for f in "$@"; do
                grep -qxF "$f" "$tmp/contents" || bad "$(basename "$deb") lacks $f"
        done
        echo "   $(basename "$deb"): $# key files checked"
}
step "dpkg -c"
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
unit=/lib/systemd/system/dsad.service
dpkg-deb -c "$deb_dsad" | grep -q '\./usr/lib/systemd/system/dsad.service$' && unit=/usr/lib/systemd/system/dsad.service
udev=/usr/lib/udev/rules.d/60-dsa-rapl.rules
contents "$deb_dsad" /usr/sbin/dsad $unit /usr/lib/sysusers.d/dsad.conf /usr/lib/tmpfiles.d/dsad.conf \
        /usr/share/dbus-1/system.d/org.dsa.Daemon1.conf \
        /usr/share/dbus-1/system-services/org.dsa.Daemon1.service \
        /usr/share/polkit-1/actions/org.dsa.Daemon1.policy /etc/dsa/dsad.conf \
        /usr/share/dsa/models/sst2-distilled-int8.gguf /usr/share/man/man8/dsad.8.gz \
        /usr/share/man/man5/dsad.conf.5.gz $udev
dpkg-deb -I "$deb_dsad" conffiles 2>/dev/null | grep -qx /etc/dsa/dsad.conf ||
        bad "/etc/dsa/dsad.conf is not a conffile"
contents "$deb_dsactl" /usr/bin/dsactl /usr/share/man/man1/dsactl.1.gz \
        /usr/share/bash-completion/completions/dsactl
contents "$deb_libdsa0" /usr/lib/$multiarch/libdsa.so.0 /usr/lib/$multiarch/libdsa.so.0.1.0
contents "$deb_libdsa_dev" /usr/include/dsa/dsa.h /usr/include/dsa/ring.h /usr/lib/$multiarch/libdsa.so \
        /usr/lib/$multiarch/pkgconfig/dsa.pc /usr/share/man/man3/libdsa.3.gz

# --- install
step "apt-get install ./dsad ./dsactl ./libdsa0 ./libdsa-dev"
# What was installed before, so the cleanup also removes what the install pulled in.
dpkg-query -W -f='${Package} ${Status}\n' | awk '/ installed$/ { print $1 }' | sort >"$tmp/before.txt"
installed=1
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq "$deb_dsad" "$deb_dsactl" "$deb_libdsa0" "$deb_libdsa_dev" >"$tmp/install.log" 2>&1; then
        apt-get update -qq >/dev/null 2>&1
        apt-get install -y -qq "$deb_dsad" "$deb_dsactl" "$deb_libdsa0" "$deb_libdsa_dev" >"$tmp/install.log" 2>&1 ||
                { cat "$tmp/install.log"; bad "apt-get install"; exit 1; }
fi
grep -iE 'warning|error' "$tmp/install.log" | grep -v 'apt does not have a stable CLI' | sed 's/^/   /'
ok "installed"
if getent passwd dsad >/dev/null; then
        ok "user dsad: $(getent passwd dsad)"
else
        bad "no dsad account after install"
fi
if [ "$(readlink /var/lib/dsa/models/sst2.gguf)" = /usr/share/dsa/models/sst2-distilled-int8.gguf ]; then
        ok "/var/lib/dsa/models/sst2.gguf -> the bundled model"
else
        bad "/var/lib/dsa/models/sst2.gguf is not the bundled model's link: $(ls -l /var/lib/dsa/models 2>&1)"
fi
if bash -c '. /usr/share/bash-completion/bash_completion 2>/dev/null; . /usr/share/bash-completion/completions/dsactl; complete -p dsactl' >/dev/null 2>&1; then
        ok "bash completion for dsactl loads"
else
        bad "bash completion for dsactl does not load"
fi

step "systemd-analyze verify $unit"
if command -v systemd-analyze >/dev/null 2>&1; then
        systemd-analyze verify "$unit" >"$tmp/verify.log" 2>&1
        rc=$?
        sed 's/^/   /' "$tmp/verify.log"
        echo "   (exit status $rc; reported, not judged: the unit's content is not this test's)"
else
        echo "   no systemd-analyze"
fi

# --- the system bus
step "system bus"
if [ -S /run/dbus/system_bus_socket ] && bus_call GetId >/dev/null; then
        ok "the system's bus answers; using it"
        bus_call ReloadConfig >/dev/null || true
else
        mkdir -p /run/dbus
        rm -f /run/dbus/system_bus_socket
        if [ -f /run/dbus/pid ] && ! kill -0 "$(cat /run/dbus/pid)" 2>/dev/null; then
                rm -f /run/dbus/pid
        fi
        bus_pid=$(dbus-daemon --system --fork --print-pid) || { bad "dbus-daemon --system"; exit 1; }
        i=0
        until bus_call GetId >/dev/null || [ $i -ge 50 ]; do sleep 0.1; i=$((i + 1)); done
        bus_call GetId >/dev/null || { bad "our system bus does not answer"; exit 1; }
        ok "started dbus-daemon --system (pid $bus_pid), which reads the installed policy"
fi

step "user $ci_user"
if [ $had_ci_user -eq 0 ]; then
        useradd --system --no-create-home --shell /usr/sbin/nologin $ci_user || { bad "useradd"; exit 1; }
fi
ok "$(id $ci_user)"
as_ci() { (cd / && runuser -u $ci_user -- "$@"); }

# --- dsad
step "dsad"
activated=0
if [ -n "$(owner_pid org.dsa.Daemon1)" ]; then
        dsad_pid=""
        ok "dsad already runs (pid $(owner_pid org.dsa.Daemon1); started by the package's unit)"
elif [ $activation -eq 1 ]; then
        echo "   no dsad yet: the first call (dsactl list as $ci_user) should activate it"
        activated=1
else
        runuser -u dsad -- /usr/sbin/dsad --bus system --foreground >"$tmp/dsad.log" 2>&1 &
        runuser_pid=$!
        i=0
        until [ -n "$(owner_pid org.dsa.Daemon1)" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
        dsad_pid=$(owner_pid org.dsa.Daemon1)
        [ -n "$dsad_pid" ] || { cat "$tmp/dsad.log"; bad "dsad did not take org.dsa.Daemon1"; exit 1; }
        ok "started dsad with runuser (pid $dsad_pid)"
fi

step "as $ci_user: dsactl --bus system list"
if as_ci dsactl --bus system list >"$tmp/out" 2>&1 && grep -q '^sst2 ' "$tmp/out"; then
        ok "sees sst2"
else
        bad "list: $(cat "$tmp/out")"
fi
sed 's/^/   | /' "$tmp/out"
if [ $activated -eq 1 ]; then
        dsad_pid=$(owner_pid org.dsa.Daemon1)
        if [ -n "$dsad_pid" ]; then
                ok "D-Bus activation started dsad (pid $dsad_pid, user $(ps -o user= -p "$dsad_pid"))"
                [ "$(ps -o user= -p "$dsad_pid")" = dsad ] || bad "the activated dsad does not run as dsad"
        else
                bad "D-Bus activation did not start dsad"
        fi
fi

step "as $ci_user: dsactl --bus system classify -m sst2 \"$text\""
if as_ci dsactl --bus system classify -m sst2 "$text" >"$tmp/out" 2>&1 && grep -q '^positive' "$tmp/out"; then
        ok "$(cat "$tmp/out")"
else
        bad "classify: $(cat "$tmp/out")"
fi

step "as $ci_user: dsactl --bus system load sst2 (must be denied)"
as_ci dsactl --bus system load sst2 >"$tmp/out" 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -qiE 'denied|not authori[sz]ed' "$tmp/out"; then
        ok "refused (exit status $rc): $(cat "$tmp/out")"
        # Denied by polkit's answer, not because polkit would not answer dsad at all.
        if grep -qi 'polkit did not answer' "$tmp/out"; then
                bad "polkit did not answer dsad (org.freedesktop.policykit.owner annotation missing?)"
        fi
else
        bad "load as $ci_user: exit status $rc, '$(cat "$tmp/out")' (want a failure saying access denied)"
fi

step "as root: dsactl --bus system load sst2"
if (cd / && dsactl --bus system load sst2) >"$tmp/out" 2>&1; then
        ok "loaded"
else
        bad "load as root: $(cat "$tmp/out")"
fi

exit 0 # cleanup (the EXIT trap) stops everything and prints PASS / FAIL
