"""The adapters: what haplane calls (Compute Engine, etcd, Secret Manager, snapshot storage, the Prefect
server's locks), the observation that fills the pure model from them, and the key material they carry
(PKI, service-account keys, sealed snapshots)."""
