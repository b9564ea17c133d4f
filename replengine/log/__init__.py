"""The on-disk Storage Replication Log: record format, io, recovery, epoch history."""
