"""Training energy measurement: sources behind one interface, a meter with windows,
aggregation over ranks and nodes. Knows nothing of Determined or of any model except
``shared.energy.callback``, the thin Determined layer on top."""

#: The validation metrics the energy hook adds (``shared.energy.callback``), with their
#: meaning: a searcher that ranks trials by one of them needs energy measured in every trial.
VALIDATION_METRICS = {
    "energy_wh": "energy measured so far, Wh",
    "energy_to_target_wh": "energy at the first validation that reached the target, Wh",
    "projected_energy_to_target_wh": "the energy-aware searcher's metric: energy_to_target_wh "
                                     "(scaled to the elapsed time by coverage) once reached, "
                                     "before that a projection from the energy scaled to the "
                                     "elapsed time; 1e12 when not measured (coverage < 0.5), "
                                     "so that the trial ranks last (shared/energy/projection.py)",
}
ENERGY_METRICS = tuple(VALIDATION_METRICS)

#: The custom metric group ``energy`` (``TrialEnergy.to_metrics`` in ``aggregate.py``), with
#: the meaning of each key.
ENERGY_GROUP = {
    "energy_wh": "the trial's energy, Wh (node input power where a BMC/Prometheus source "
                 "measured it, else GPU + CPU + DRAM)",
    "gpu_wh": "GPU energy of the trial's GPUs (NVML)",
    "cpu_wh": "CPU packages (RAPL) x the trial's share of the node",
    "dram_wh": "DRAM (RAPL) x share",
    "node_wh": "node input power (Redfish, IPMI, Prometheus) x share",
    "setup_wh": "energy_wh's part from the meter's start to the first batch (data loaders, "
                "checkpoint loading)",
    "train_wh": "energy_wh's part spent training (all but the other phases)",
    "validation_wh": "energy_wh's part spent validating",
    "checkpoint_wh": "energy_wh's part spent writing and uploading checkpoints",
    "compile_wh": "energy_wh's part spent in torch.compile's warm-up batches (compile: true; "
                  "0.0 otherwise; the six phases sum to energy_wh)",
    "mining_wh": "energy_wh's part spent mining hard negatives (rare_objects; 0.0 elsewhere; "
                 "the six phases sum to energy_wh)",
    "setup_s": "seconds of the setup phase (as setup_wh); the six <phase>_s sum to duration_s",
    "train_s": "seconds of the train phase (as train_wh; the basis of images/s)",
    "validation_s": "seconds of the validation phase",
    "checkpoint_s": "seconds of the checkpoint phase",
    "compile_s": "seconds of the compile phase (torch.compile's warm-up batches)",
    "mining_s": "seconds of the mining phase (rare_objects' hard-negative mining)",
    "avg_power_w": "energy_wh / duration_s",
    "gpu_util_pct": "mean GPU utilisation over the run, % (NVML's utilisation counter sampled "
                    "every second, per rank, then averaged over the ranks); absent from every "
                    "report of a trial without NVML",
    "duration_s": "measured time",
    "sources": "the sources that measured",
    "nodes": "nodes of the trial",
    "nodes_measured": "nodes with a measurement",
    "coverage": "fraction of the time covered by measurements (< 1: holes, a pause)",
    "measured": "true when energy_wh counts as measured (a figure with coverage >= 0.5); false: "
                "a lower bound at best, not a measurement (shared/energy/projection.py)",
    "bridged_s": "seconds a sampled source bridged over failed samples with a straight line "
                 "(the source that bridged longest; 0.0 when none did)",
    "lag_s": "seconds the measured figures may trail the report's end (the source that lags "
             "most: Prometheus two steps, a sampled source the time since its last good "
             "sample, a counter read at report time 0.0)",
    "apportion": "the apportion rule applied",
    "estimate": "always false: every figure is measured",
    "facility_wh": "energy x PUE (energy.pue set)",
    "co2e_g": "facility (or IT) energy x carbon intensity (energy.carbon_intensity_g_per_kwh set)",
}
