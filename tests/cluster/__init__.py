"""Cluster tests: a real Pacemaker/Corosync cluster in network namespaces (see harness.py)."""
