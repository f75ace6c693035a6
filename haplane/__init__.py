"""haplane: highly available Kubernetes control planes on GCE, as Prefect workflows."""

__version__ = "0.1.0"
