"""The pure rules: the model of an observed cluster and every decision on it (plans, quorum, placement,
ownership, remediation, restore, versions, what counts as a secret). Standard library only: no I/O, no
cloud, Prefect or crypto library (tests/unit/test_layering.py imports each with those made unimportable)."""
