"""Child processes that keep CPU-bound work (evolution, re-evaluation, signature checks) off
the daemon's GIL."""
