"""What a control-plane VM runs: the instance-metadata contract (:mod:`haplane.node.spec`), the restore step
before etcd's first start (:mod:`haplane.node.restore_boot`) and the startup script of a real GCE VM
(:mod:`haplane.node.startup`)."""
