"""An MIT Kerberos KDC for tests: a test realm on a loopback port, principals of the LDAP users."""
