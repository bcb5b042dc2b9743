"""The sans-IO peer protocol: every decision a peer makes (ingest, fetch, publish, migrants,
trust), with no sockets, no trio and no clock."""
