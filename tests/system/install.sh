#!/usr/bin/env bash
# Installs the system packages that some tests need (real MTAs, real client libraries).
# As root with apt-get: installs what is missing, non-interactively, with no system service started
# or left enabled (the tests run private instances on 127.0.0.1 high ports).
# Elsewhere: prints what to install and exits 0; those tests then skip with a message (or fail
# with CI=true, see tests/system/__init__.py).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# One package per line in each list; comments say which tests need them.
mapfile -t packages < <(grep -hv '^\s*#' "$here"/packages-*.txt 2>/dev/null | awk 'NF' | sort -u)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tests/system/install.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # No MTA on port 25, no daemon started by the package scripts.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/email-reconciler-apt.log 2>&1 \
      || { apt-get update -q >>/tmp/email-reconciler-apt.log 2>&1 \
           && apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/email-reconciler-apt.log 2>&1; } \
      || { echo "tests/system/install.sh: apt-get failed, see /tmp/email-reconciler-apt.log"; tail -20 /tmp/email-reconciler-apt.log; }
    rm -f /usr/sbin/policy-rc.d
  else
    echo "tests/system/install.sh: not root with apt-get; install these for the full suite: ${missing[*]}"
  fi
fi

# The packages' own daemons stay off, also when the packages came from elsewhere (an image, a
# plain apt-get): stopped, and disabled for systemd and SysV init alike ("disable" rather than
# "remove", so a package upgrade does not re-enable them). `systemctl disable` works without a
# running systemd (containers); --now would fail there before disabling anything.
if [ "$(id -u)" = 0 ]; then
  for svc in postfix dovecot prometheus-alertmanager; do
    [ -e "/lib/systemd/system/$svc.service" ] || [ -e "/etc/init.d/$svc" ] || continue
    if command -v systemctl >/dev/null; then
      systemctl stop "$svc" >/dev/null 2>&1 || true
      systemctl disable "$svc" >/dev/null 2>&1 || true
    fi
    if [ -x "/etc/init.d/$svc" ] && command -v update-rc.d >/dev/null; then
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
fi

# Extra installers (npm packages into a cache folder, ...): tests/system/extra-*.sh, each idempotent.
for extra in "$here"/extra-*.sh; do
  [ -f "$extra" ] && bash "$extra"
done
exit 0
