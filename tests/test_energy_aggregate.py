"""Aggregation over ranks and nodes: each joule counted once, node figures apportioned,
PSU figures not added to their parts; with plain dicts and with two real processes that
exchange their reports through Determined's DistributedContext.allgather."""
from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.energy.aggregate import RankEnergy, TrialEnergy, combine

REPO = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes"


def rank(node: str, r: int, lr: int, *, gpu=None, cpu=None, dram=None, psu=None, slots=2,
         gpus=8, sources=("nvml",), coverage=None, duration=100.0) -> dict:
    return RankEnergy(node_id=node, rank=r, local_rank=lr, gpu_j=gpu, cpu_j=cpu, dram_j=dram,
                      node_j=psu, slots_on_node_for_trial=slots, gpus_on_node=gpus,
                      sources=list(sources),
                      coverage=coverage if coverage is not None else {s: 1.0 for s in sources},
                      duration_s=duration).to_dict()


def two_node_reports() -> list:
    # node a: 2 of its 8 GPUs, RAPL on the reader; node b: 2 of 8 GPUs, a BMC figure + RAPL
    return [
        rank("a", 0, 0, gpu=1000.0, cpu=800.0, dram=80.0, sources=("nvml", "rapl")),
        rank("a", 1, 1, gpu=1200.0),
        rank("b", 2, 0, gpu=900.0, cpu=400.0, psu=16000.0, sources=("nvml", "rapl", "ipmi"),
             coverage={"nvml": 1.0, "rapl": 1.0, "ipmi": 0.9}, duration=101.0),
        rank("b", 3, 1, gpu=1100.0),
    ]


def test_two_nodes_counted_once_with_gpu_share():
    trial = combine(two_node_reports())
    share = 2 / 8
    node_a = 1000 + 1200 + (800 + 80) * share       # parts: GPUs + CPU/DRAM share
    node_b = 16000 * share                          # PSU input already contains the GPUs
    assert trial.energy_j == pytest.approx(node_a + node_b)
    m = trial.to_metrics()
    assert m["energy_wh"] == pytest.approx((node_a + node_b) / 3600)
    assert m["gpu_wh"] == pytest.approx(4200 / 3600)
    assert m["cpu_wh"] == pytest.approx((800 + 400) * share / 3600)
    assert m["dram_wh"] == pytest.approx(80 * share / 3600)
    assert m["node_wh"] == pytest.approx(node_b / 3600)
    assert m["duration_s"] == 101.0
    assert m["avg_power_w"] == pytest.approx((node_a + node_b) / 101.0)
    assert (m["sources"], m["nodes"], m["nodes_measured"]) == ("ipmi,nvml,rapl", 2, 2)
    assert (m["coverage"], m["apportion"], m["estimate"]) == (0.9, "gpu_share", False)
    assert "facility_wh" not in m and "co2e_g" not in m


def test_apportion_none_charges_whole_nodes():
    trial = combine(two_node_reports(), apportion="none")
    assert trial.energy_j == pytest.approx(1000 + 1200 + 800 + 80 + 16000)
    assert trial.to_metrics()["apportion"] == "none"


def test_cpu_only_trial_takes_the_whole_node():
    reports = [rank("c", 0, 0, cpu=500.0, dram=50.0, gpus=0, slots=1, sources=("rapl",))]
    trial = combine(reports)
    assert trial.energy_j == pytest.approx(550.0)
    m = trial.to_metrics()
    assert m["gpu_wh"] is None and m["node_wh"] is None  # not measured, not zero


def test_nothing_measured_is_said_not_zeroed():
    trial = combine([rank("a", 0, 0, sources=()), rank("a", 1, 1, sources=())])
    m = trial.to_metrics(pue=1.3, carbon_intensity_g_per_kwh=400.0)
    assert m["energy_wh"] is None and m["avg_power_w"] is None
    assert m["sources"] == "none" and m["coverage"] is None
    assert m["nodes"] == 1 and m["nodes_measured"] == 0
    assert m["facility_wh"] is None and m["co2e_g"] is None
    assert combine([]).to_metrics()["sources"] == "none"


def test_one_node_unmeasured_is_counted_in_nodes_not_in_energy():
    reports = [rank("a", 0, 0, gpu=100.0), rank("b", 1, 0, sources=())]
    m = combine(reports).to_metrics()
    assert m["energy_wh"] == pytest.approx(100 / 3600)
    assert (m["nodes"], m["nodes_measured"]) == (2, 1)


def test_two_readers_on_one_node_are_counted_once(caplog):
    reports = [rank("a", 0, 0, cpu=800.0, gpus=0, slots=2, sources=("rapl",)),
               rank("a", 1, 1, cpu=805.0, gpus=0, slots=2, sources=("rapl",))]
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        trial = combine(reports)
    assert trial.energy_j == pytest.approx(800.0)
    assert any("2 ranks on node a report node-level energy" in r.getMessage()
               for r in caplog.records)


def test_facility_and_carbon():
    m = combine([rank("a", 0, 0, gpu=3600.0 * 1000)]).to_metrics(
        pue=1.25, carbon_intensity_g_per_kwh=300.0)
    assert m["energy_wh"] == pytest.approx(1000.0)
    assert m["facility_wh"] == pytest.approx(1250.0)
    assert m["co2e_g"] == pytest.approx(1.25 * 300.0)  # 1.25 kWh at the meter x 300 g/kWh
    m = combine([rank("a", 0, 0, gpu=3600.0 * 1000)]).to_metrics(
        carbon_intensity_g_per_kwh=300.0)
    assert m["co2e_g"] == pytest.approx(300.0) and "facility_wh" not in m


def test_resume_offset_adds_per_component():
    first = combine(two_node_reports())
    second = combine([rank("a", 0, 0, gpu=50.0, sources=("nvml",), duration=10.0)])
    total = second.plus(TrialEnergy.from_dict(pickle.loads(pickle.dumps(first.to_dict()))))
    assert total.energy_j == pytest.approx(first.energy_j + 50.0)
    assert total.gpu_j == pytest.approx(first.gpu_j + 50.0)
    assert total.node_j == pytest.approx(first.node_j)
    assert total.duration_s == pytest.approx(111.0)
    assert total.sources == ["ipmi", "nvml", "rapl"] and total.coverage == 0.9
    assert TrialEnergy.empty().plus(TrialEnergy.empty()).energy_j is None


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"energy.apportion must be one of \('gpu_share', "
                                         r"'none'\), got 'by_power'"):
        combine([], apportion="by_power")
    bad = rank("a", 0, 0, gpu=1.0)
    del bad["gpus_on_node"]
    bad["watts"] = 3
    with pytest.raises(ValueError, match=r"RankEnergy dict: missing keys \['gpus_on_node'\], "
                                         r"unknown keys \['watts'\]"):
        combine([bad])
    with pytest.raises(ValueError, match=r"TrialEnergy state: missing keys \['energy_j'"):
        TrialEnergy.from_dict({"duration_s": 1.0})


# --------------------------------------------------------------------------- two processes
WORKER = textwrap.dedent(r'''
    import importlib.util, json, os, sys
    from pathlib import Path
    import torch.distributed as tdist
    import determined as det
    from shared.energy.aggregate import RankEnergy, combine
    from shared.energy.meter import EnergyMeter
    from shared.energy.sources.base import EnergySource
    from shared.energy.sources.nvml import NvmlSource
    from shared.energy.sources.rapl import RaplSource

    def load(name):
        spec = importlib.util.spec_from_file_location(name, Path(os.environ["FAKES"]) / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    class Clock:
        t = 1000.0
        def __call__(self):
            return self.t

    class FakePsu(EnergySource):
        """Node input energy as a BMC would give it (component "node")."""
        name, scope, joules = "fakepsu", "node", 0.0
        def open(self):
            pass
        def read(self):
            return {"node": self.joules}

    r = int(os.environ["RANK"])
    spec = json.loads(os.environ["NODE_SPEC"])
    tdist.init_process_group("gloo", init_method=os.environ["INIT_METHOD"], rank=r,
                             world_size=int(os.environ["WORLD_SIZE"]))
    dist = det.core.DistributedContext.from_torch_distributed()

    clock = Clock()
    nvml = load("pynvml_fake")
    sys.modules["pynvml"] = nvml
    nvml.reset([nvml.FakeGpu(power_w=w) for w in spec["gpu_power_w"]], clock=clock)
    pc = load("powercap").FakePowercap(Path(os.environ["TMP"]) / f"node{r}")
    pc.add_zone("intel-rapl:0", "package-0")
    pc.add_zone("intel-rapl:0:0", "dram")
    sources = [NvmlSource([0], env={"CUDA_VISIBLE_DEVICES": spec["cuda_visible"]}),
               RaplSource(pc.root, poll_below_s=1.0, clock=clock)]
    psu = FakePsu()
    if spec["psu_w"]:
        sources.append(psu)
    meter = EnergyMeter(sources, clock=clock).start()

    clock.t += spec["seconds"]
    pc.advance("intel-rapl:0", spec["cpu_w"] * spec["seconds"])
    pc.advance("intel-rapl:0:0", spec["dram_w"] * spec["seconds"])
    psu.joules = (spec["psu_w"] or 0) * spec["seconds"]

    mine = RankEnergy.from_snapshot(meter.read(), node_id=f"node{r}", rank=dist.rank,
                                    local_rank=dist.local_rank, slots_on_node_for_trial=1,
                                    gpus_on_node=len(spec["gpu_power_w"]))
    everyone = dist.allgather(mine.to_dict())
    if dist.rank == 0:
        trial = combine(everyone, "gpu_share")
        Path(os.environ["OUT"]).write_text(json.dumps(trial.to_metrics()))
    meter.close()
    dist.close()
    tdist.destroy_process_group()
''')


def free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_processes_two_nodes_allgather_and_combine(tmp_path):
    seconds = 10.0
    nodes = [
        # node0: 4 GPUs, ours is NVML index 2 (CUDA_VISIBLE_DEVICES=2), RAPL only
        dict(gpu_power_w=[100.0, 150.0, 200.0, 250.0], cuda_visible="2", cpu_w=60.0,
             dram_w=8.0, psu_w=None, seconds=seconds),
        # node1: 4 GPUs, ours is NVML index 0, RAPL and a PSU reading
        dict(gpu_power_w=[310.0, 90.0, 90.0, 90.0], cuda_visible="GPU-00000000", cpu_w=70.0,
             dram_w=9.0, psu_w=1800.0, seconds=seconds),
    ]
    # Truth, computed here from the specs: share = 1 slot / 4 GPUs on each node.
    share = 1 / 4
    node0 = 200.0 * seconds + (60.0 + 8.0) * seconds * share
    node1 = 1800.0 * seconds * share  # the PSU figure is the node total
    truth = node0 + node1

    port, pub, pull = free_ports(3)
    out = tmp_path / "trial.json"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for r, spec in enumerate(nodes):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK="0",
                   LOCAL_WORLD_SIZE="1", GROUP_RANK=str(r), GROUP_WORLD_SIZE="2",
                   DET_CHIEF_IP="127.0.0.1", INIT_METHOD=f"tcp://127.0.0.1:{port}",
                   INTER_TRAIN_PROCESS_COMM_PORT_1=str(pub),
                   INTER_TRAIN_PROCESS_COMM_PORT_2=str(pull),
                   NODE_SPEC=json.dumps(spec), FAKES=str(FAKES), TMP=str(tmp_path),
                   OUT=str(out), PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=60)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two ranks did not finish in 60 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    m = json.loads(out.read_text())
    # the fake GPU counter refreshes every 0.1 s: +-0.1 s of GPU power at each end
    assert m["energy_wh"] * 3600 == pytest.approx(truth, abs=2 * 0.1 * 200.0)
    assert m["gpu_wh"] * 3600 == pytest.approx((200.0 + 310.0) * seconds, abs=2 * 0.1 * 310)
    assert m["node_wh"] * 3600 == pytest.approx(node1)
    assert (m["nodes"], m["nodes_measured"], m["sources"]) == (2, 2, "fakepsu,nvml,rapl")
    assert m["duration_s"] == pytest.approx(seconds)


def _split(whole: dict, fractions: dict) -> dict:
    """A rank's phases: each measured component split by the given fractions."""
    comps = {"gpu": whole["gpu_j"], "cpu": whole["cpu_j"], "dram": whole["dram_j"],
             "node": whole["node_j"]}
    return {phase: {c: j * f for c, j in comps.items() if j is not None}
            for phase, f in fractions.items()}


def test_phases_combine_as_the_total_does_and_sum_to_it():
    fractions = {"setup": 0.05, "train": 0.7, "validation": 0.2, "checkpoint": 0.05}
    reports = two_node_reports()
    for r in reports:
        r["phases"] = _split(r, fractions)
    reports[0]["bridged_s"], reports[2]["bridged_s"] = 3.0, 7.5
    trial = combine(reports)
    m = trial.to_metrics()
    for phase, f in fractions.items():
        assert m[f"{phase}_wh"] == pytest.approx(f * m["energy_wh"])
    assert sum(m[f"{p}_wh"] for p in fractions) == pytest.approx(m["energy_wh"])
    assert m["bridged_s"] == 7.5  # the source that bridged longest
    # a resumed trial continues the split, and bridged time adds up over the segments
    total = trial.plus(TrialEnergy.from_dict(pickle.loads(pickle.dumps(trial.to_dict()))))
    m2 = total.to_metrics()
    assert m2["validation_wh"] == pytest.approx(2 * m["validation_wh"])
    assert m2["bridged_s"] == 15.0
    # and from an energy record, as a crashed run's last report is carried
    carried = TrialEnergy.from_metrics(m)
    assert carried.to_metrics()["checkpoint_wh"] == pytest.approx(m["checkpoint_wh"])


def test_phase_keys_are_numbers_whenever_energy_is():
    bare = combine([rank("a", 0, 0, gpu=100.0)]).to_metrics()  # a rank without a split
    assert all(bare[f"{p}_wh"] == 0.0 for p in ("setup", "train", "validation", "checkpoint"))
    assert bare["bridged_s"] == 0.0
    nothing = combine([rank("a", 0, 0, sources=())]).to_metrics()
    assert nothing["energy_wh"] is None and nothing["train_wh"] is None
    assert nothing["bridged_s"] == 0.0
    # a checkpoint written before the split existed still loads
    old = {k: v for k, v in TrialEnergy.empty().to_dict().items()
           if k not in ("bridged_s", "phase_j")}
    assert TrialEnergy.from_dict(old).phase_j == {}


def test_lag_s_is_the_worst_lag_and_a_number_in_every_report():
    """Issue 12 item 5: how far the figures may trail the report's end is said in the figure."""
    reports = two_node_reports()
    reports[0]["lag_s"], reports[2]["lag_s"] = 10.0, 30.0  # e.g. Prometheus at 5 s and 15 s
    trial = combine(reports)
    m = trial.to_metrics()
    assert m["lag_s"] == 30.0  # the source that lags most, not a sum
    # a lag is at the end of each segment: a resumed trial keeps the worst, it does not add
    resumed = trial.plus(TrialEnergy.from_dict(pickle.loads(pickle.dumps(trial.to_dict()))))
    assert resumed.to_metrics()["lag_s"] == 30.0
    assert TrialEnergy.from_metrics(m).lag_s == 30.0
    # a float whenever a report is made, measured or not (a column never mixes types)
    bare = combine([rank("a", 0, 0, gpu=100.0)]).to_metrics()
    nothing = combine([rank("a", 0, 0, sources=())]).to_metrics()
    for metrics in (m, bare, nothing, TrialEnergy.empty().to_metrics()):
        assert type(metrics["lag_s"]) is float
    assert bare["lag_s"] == nothing["lag_s"] == 0.0
    # checkpoints and rank reports written before lag_s existed still load
    old = {k: v for k, v in trial.to_dict().items() if k != "lag_s"}
    assert TrialEnergy.from_dict(old).lag_s == 0.0
    old_rank = {k: v for k, v in two_node_reports()[0].items() if k != "lag_s"}
    assert RankEnergy.from_dict(old_rank).lag_s == 0.0


def test_gpu_util_is_averaged_over_ranks_and_weighted_by_time_across_a_resume():
    from shared.energy.aggregate import RankEnergy, TrialEnergy, combine

    def rank(i: int, util, secs):
        return RankEnergy(node_id="n", rank=i, local_rank=i, gpu_j=3600.0, cpu_j=None,
                          dram_j=None, node_j=None, slots_on_node_for_trial=3, gpus_on_node=4,
                          duration_s=100.0, phase_s=secs, gpu_util_pct=util)

    trial = combine([rank(0, 90.0, {"train": 60.0, "compile": 40.0}),
                     rank(1, 70.0, {"train": 70.0, "compile": 30.0}),
                     rank(2, None, {})])  # a rank without NVML utilisation: left out
    assert trial.gpu_util_pct == pytest.approx(80.0)
    assert trial.phase_s["train"] == 70.0 and trial.phase_s["compile"] == 40.0  # longest rank
    m = trial.to_metrics()
    assert m["gpu_util_pct"] == pytest.approx(80.0) and m["compile_s"] == 40.0
    earlier = TrialEnergy.from_metrics({**m, "duration_s": 300.0, "gpu_util_pct": 40.0})
    resumed = trial.plus(earlier)  # 100 s at 80% after 300 s at 40%
    assert resumed.gpu_util_pct == pytest.approx(50.0)
    assert resumed.phase_s["compile"] == 80.0
    assert TrialEnergy.from_dict(resumed.to_dict()) == resumed
    none = combine([rank(0, None, {})])
    assert "gpu_util_pct" not in none.to_metrics()  # without NVML: the key is absent
