#!/usr/bin/env bash
# Install the Debian packages the real test bed needs (idempotent, non-interactive).
#
# chromium, chromium-driver: headless browser for the page tests (tests/integration/test_demo_browser.py).
# slapd, ldap-utils: OpenLDAP server + client tools. The tests start their own slapd processes on
# loopback ports (tests/testbed/ldap/slapd.py); no system-wide directory server must be configured or left
# running (it would hold port 389 and is not ours).
# krb5-kdc, krb5-admin-server (for kadmin.local), krb5-user (kinit, klist): MIT Kerberos. The tests
# start their own krb5kdc on a loopback port with a test realm (tests/testbed/krb5/kdc.py); the
# packages' own services are not used and are stopped if they run.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

need=()
for pkg in slapd ldap-utils chromium chromium-driver krb5-kdc krb5-admin-server krb5-user; do
  installed "$pkg" || need+=("$pkg")
done

if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # No initial configuration (no /etc/ldap/slapd.d, no dc=nodomain database) ...
  echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections
  # ... and the package's init script must not start a server: /etc/init.d/slapd honours this
  # sentinel (SLAPD_SENTINEL_FILE in /etc/default/slapd).
  $SUDO mkdir -p /etc/ldap
  $SUDO touch /etc/ldap/noslapd
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# If a system-wide slapd runs anyway (an earlier install, systemd), stop it through its own service
# manager; only the system service is touched, never the test bed's own slapd processes.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now slapd.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/slapd ] && [ -s /var/run/slapd/slapd.pid ]; then
  $SUDO /etc/init.d/slapd stop >/dev/null 2>&1 || true
fi
# The same for the Kerberos packages' services (a KDC for the empty default realm is not ours).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now krb5-kdc.service krb5-admin-server.service >/dev/null 2>&1 || true
fi

for bin in /usr/sbin/slapd /usr/sbin/slapadd /usr/bin/ldapsearch /usr/bin/chromium /usr/bin/chromedriver \
  /usr/sbin/krb5kdc /usr/sbin/kdb5_util /usr/sbin/kadmin.local /usr/bin/kinit /usr/bin/klist; do
  [ -x "$bin" ] || { echo "system-deps: $bin missing after install" >&2; exit 1; }
done
