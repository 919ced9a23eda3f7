"""Training energy measurement: sources behind one interface, a meter with windows,
aggregation over ranks and nodes. Knows nothing of Determined or of any model except
``shared.energy.callback``, the thin Determined layer on top."""

#: The validation metrics the energy hook adds (``shared.energy.callback``): a searcher that
#: ranks trials by one of them needs energy measured in every trial.
ENERGY_METRICS = ("energy_wh", "energy_to_target_wh", "projected_energy_to_target_wh")
