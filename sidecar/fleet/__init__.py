"""A fleet of sidecars sharing Redis: a second cache level, fleet-wide single-flight, purges and
a DPoP replay store (docs/fleet.md). Imported only when ``fleet.enabled`` (redis-py is the
``fleet`` extra)."""
