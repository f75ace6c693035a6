"""How a cluster's endpoint (its static IP) is served: the endpoint mode, kept in the cluster's spec.

- ``always`` (the default for new clusters, as Cluster API's GCP provider and kops do): health
  check, target pool and forwarding rule on the static IP from the first replica on. Scaling
  1 -> 2 and 2 -> 1 only adds to or takes from the target pool; the IP never moves, so the
  endpoint never stops answering. Costs a forwarding rule even at one replica.
- ``as-needed`` (the seed's ``kube-up.sh``): a single replica carries the static IP itself; going
  1 -> 2 the IP moves onto a new forwarding rule, going 2 -> 1 back onto the last replica. GCE
  refuses a forwarding rule on an address a VM still uses, so the endpoint is down for the whole
  forwarding-rule creation (about 20 minutes on GCE).

Specs saved before the mode existed read as ``as-needed``: that is what those clusters are.
"""

from __future__ import annotations

from enum import StrEnum


class EndpointMode(StrEnum):
    ALWAYS = "always"
    AS_NEEDED = "as-needed"

    def has_load_balancer(self, replicas: int) -> bool:
        """Whether a cluster of ``replicas`` replicas in this mode serves its endpoint from a load balancer."""
        return self is EndpointMode.ALWAYS or replicas > 1
