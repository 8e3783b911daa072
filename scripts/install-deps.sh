#!/bin/sh
# Installs the Debian 12 packages dsa needs to build (and, with --test, to run its test suite:
# clang and its runtime for the libFuzzer targets). Only what is missing is installed, so a
# second run does nothing. Needs root (or sudo) when something is missing.
set -eu

pkgs="build-essential cmake pkg-config libopenblas-dev libjson-c-dev libutf8proc-dev libpcre2-dev
      libuv1-dev libsystemd-dev liburing-dev libinih-dev dbus"
if [ "${1:-}" = "--test" ]; then
        pkgs="$pkgs libcmocka-dev clang libclang-rt-14-dev python3 libglib2.0-dev libglib2.0-bin systemd
              python3-torch python3-numpy bash-completion"
fi

missing=""
for p in $pkgs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "install-deps: installing$missing" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
