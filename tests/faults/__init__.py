"""A seeded, randomized fault schedule over a 4-node resource, checked against the README.

- ``ledger``: tagged writes (every 512-byte sector names the write and its sector), the
  writer thread keeping the ledger, and the model of the volume.
- ``checks``: the README's rules as functions over what a round observed; each returns
  ``Violation`` records naming the seed, the round, the node and the LSNs.
- ``deposed``: rule 4's checks, what a primary acknowledged after it was replaced (frozen,
  cut off, or starved of CPU).
- ``schedule``: the faults (SIGSTOP / SIGKILL of any node at random moments, the primary
  frozen and replaced, two failovers in a row, a kill of a node while it rejoins or rewinds,
  SRLs small enough to fill), one round = faults, heal, quiesce, checks.
- ``netns``: ``--net netns``: each node's daemon in its own network namespace on a bridge,
  and the network faults (a node's link down, a split in two, packet loss, delay);
- ``faultfs``: a FUSE passthrough that fails reads or writes with EIO on command, or
  loses what was never synced, as in a power cut (one node's volume and SRL live on it in
  ``--net netns``);
- ``diskfaults``: the schedule's faults of that disk (EIO, a hang, a power cut) and the
  check that a node's acknowledgements outlive its power cut;
- ``cpuslow``: a daemon starved of CPU (a cgroup's CFS quota), never stopped;
- ``run``: ``python -m tests.faults.run`` for long runs (per-round lines and a summary).
- ``test_schedule``: the checks' own unit tests and the small always-on part (a few rounds);
  ``test_faultfs``: what the power cut keeps and loses.

Only ``replengine`` is imported, so the package runs both under pytest and as a module.
"""
