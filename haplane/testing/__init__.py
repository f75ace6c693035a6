"""What tests/ and bench/ share to run haplane against real services on this machine.

Harnesses (no pytest here; the fixtures that wrap them are in tests/fixtures/):

- :mod:`haplane.testing.prefect`: a Prefect server (``prefect server start``) on a free port.
- :mod:`haplane.testing.postgres`: a throw-away PostgreSQL for that server.
- :mod:`haplane.testing.worker`: a ``prefect worker start --type process``.
- :mod:`haplane.testing.etcd`: real etcd clusters on loopback with mutual TLS.
- :mod:`haplane.testing.canary`: the canary, a client writing through a cluster while it changes.
- :mod:`haplane.testing.poll`: waiting until a condition holds.

And the constants the tests share: the project, region and zones their clusters live in.
"""

PROJECT = "haplane-test"
REGION = "europe-west1"
ZONES = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]
