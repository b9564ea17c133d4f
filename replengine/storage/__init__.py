"""The node's copy of the data: the volume and the persistent dirty-region map."""
