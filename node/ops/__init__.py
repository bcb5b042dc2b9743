"""Operating a node: settings, the HTTP status server, metrics, and local multi-process
testnets."""
