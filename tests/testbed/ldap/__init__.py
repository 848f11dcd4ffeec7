"""A real OpenLDAP ``slapd`` with a Fermilab-like directory, for tests.

Each :class:`~testbed.ldap.slapd.LDAPTestbed` owns a temporary directory holding a TLS key pair
(signed by a CA shared by every instance of this process, so one ``ca_cert_path`` validates them
all), a ``slapd.conf``, an mdb database loaded with ``slapadd``, and a ``slapd`` child process
listening on 127.0.0.1 only (plain LDAP with StartTLS, and LDAPS, on two free ports).

Modules:

- :mod:`testbed.ldap.directory`: the tree (people, groups, service account) and its LDIF
- :mod:`testbed.ldap.pki`: the shared test CA and per-instance server certificates
- :mod:`testbed.ldap.slapd`: ``slapd.conf`` (ACLs), ``slapadd`` and the ``slapd`` process
- :mod:`testbed.ldap.wire`: a raw LDAPv3 simple bind, for what ldap3 refuses to send
- :mod:`testbed.ldap.fixtures`: ``ldap_testbed`` and ``ldap_testbed_factory``

PYTEST_DONT_REWRITE (no assertions here; test modules may import this plugin before pytest does)
"""
