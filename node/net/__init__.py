"""The libp2p adapter: py-libp2p 0.8.1 transport, gossip and sync streams, and the
workarounds for that library's bugs."""
