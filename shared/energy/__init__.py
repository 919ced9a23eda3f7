"""Training energy measurement: sources behind one interface, a meter with windows,
aggregation over ranks and nodes. Knows nothing of Determined or of any model except
``shared.energy.callback``, the thin Determined layer on top."""
