"""Bytes between processes: the peer protocol, the ZeroMQ transport, the control socket."""
