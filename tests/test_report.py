"""Reports (shared.report): table values against hand computation on synthetic runs with
known power, batches and target crossing; charts and the self-contained HTML; the scaling
study; the master path through the real Determined SDK against a loopback server replaying
a master's REST responses (tests/fixtures/report/master, see make_master_fixtures.py)."""
import base64
import csv
import hashlib
import io
import json
import pathlib
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from mdtables import squeeze
from shared import report
from shared.report import ReportError, build_report, load_inputs, load_local
from shared.report.__main__ import main
from shared.report.load import Run
from shared.report.series import power_intervals, timeline

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "report"
sys.path.insert(0, str(FIXTURES))
from synth import T0, run_records, write_run  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HP = {"target_miou": 16, "global_batch_size": 8}


# ----------------------------------------------------------------------------- local runs
@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Three local runs with known answers (see synth.py for the timing model):

    unet: 8 img/batch, 0.5 s/batch, validation every 10 batches taking 1 s, mIoU 4, 9, 17, 21,
      target 16, 200 W. Target at batch 30: 30 x 0.5 + 3 x 1 = 18 s, 200 x 18 / 3600 = 1 Wh.
      Last energy report (batch 40): 20 + 3 = 23 s, 200 x 23 / 3600 Wh; 320 images;
      J/img = 200 x 23 / 320 = 14.375.
    segformer: no energy at all, mIoU 2, 5, 8, 12: target not reached.
    deeplab: 100 W, PUE 1.5, 400 g/kWh, coverage 0.8; 4 img/batch, 1 s/batch, no validation
      time, mIoU 10, 16, 18, 19: target at batch 20 = 20 s, 100 x 20 / 3600 Wh.
    """
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "unet", run_records(model="unet", params=6_700_000, gbs=8, batch_s=0.5,
                                         val_s=1.0, power_w=200.0), HP)
    write_run(root / "segformer", run_records(model="segformer", params=3_700_000, gbs=8,
                                              batch_s=0.5, mious=(2, 5, 8, 12), power_w=None), HP)
    write_run(root / "deeplab", run_records(model="deeplabv3plus", params=26_000_000, gbs=4,
                                            batch_s=1.0, mious=(10, 16, 18, 19), power_w=100.0,
                                            pue=1.5, carbon_g_per_kwh=400.0, coverage=0.8,
                                            sources="nvml,rapl"), HP)
    return root


@pytest.fixture(scope="module")
def built(runs_dir, tmp_path_factory):
    runs = load_inputs([str(runs_dir / "unet"), str(runs_dir / "segformer"), str(runs_dir / "deeplab")])
    out = tmp_path_factory.mktemp("report")
    return build_report(runs, out)


def rows_by_label(rep):
    return {r.label: r for r in rep.rows}


def test_table_values_equal_hand_computed(built):
    assert built.target_miou == 16.0
    u = rows_by_label(built)["unet"]
    assert u.reached and u.target_basis == "trial" and u.batches_to_target == 30
    assert u.time_to_target_s == pytest.approx(18.0)
    assert u.energy_to_target_wh == pytest.approx(200 * 18 / 3600)
    assert u.avg_power_w == pytest.approx(200.0)
    assert u.energy_wh == pytest.approx(200 * 23 / 3600)
    assert u.images == 320
    assert u.j_per_image == pytest.approx(14.375)
    assert (u.final_miou, u.best_miou) == (21.0, 21.0)
    assert (u.model, u.params, u.slots) == ("unet", 6_700_000, 1)
    assert u.energy_sources == "nvml" and u.coverage == 1.0 and not u.notes

    d = rows_by_label(built)["deeplab"]
    assert d.time_to_target_s == pytest.approx(20.0)
    assert d.energy_to_target_wh == pytest.approx(100 * 20 / 3600)
    assert d.j_per_image == pytest.approx(100 * 40 / (40 * 4))
    assert d.facility_wh == pytest.approx(100 * 40 / 3600 * 1.5)
    assert d.co2e_g == pytest.approx(100 * 40 / 3600 * 1.5 / 1000 * 400)
    assert any("coverage 0.80 < 1" in n for n in d.notes)


def test_partial_data_reads_not_reached_and_not_measured(built):
    s = rows_by_label(built)["segformer"]
    assert not s.reached and s.time_to_target_s is None
    assert s.energy_wh is None and s.avg_power_w is None and s.j_per_image is None
    md = squeeze((built.out_dir / "comparison.md").read_text())
    line = next(l for l in md.splitlines() if l.startswith("| segformer"))
    # not measured: avg power, J/img, the energy split, energy sources
    assert line.count("not reached") == 2 and line.count("not measured") == 4
    assert "| 0.0 |" not in line and "| 0 |" not in line
    deeplab = next(l for l in md.splitlines() if l.startswith("| deeplab"))
    assert "0.80 \u26a0" in deeplab and "nvml,rapl (1/1 nodes)" in deeplab

    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((built.out_dir / "comparison.csv").read_text()))}
    assert rows["segformer"]["reached_target"] == "no"
    assert rows["segformer"]["energy_wh"] == "" and rows["segformer"]["time_to_target_s"] == ""
    assert rows["segformer"]["energy_sources"] == "not measured"
    assert float(rows["unet"]["j_per_image"]) == pytest.approx(14.375)
    assert float(rows["unet"]["time_to_target_s"]) == pytest.approx(18.0)
    assert float(rows["deeplab"]["coverage"]) == 0.8


def test_pngs_and_self_contained_html(built):
    names = {c.name for c in built.charts}
    assert names == {"miou_vs_energy", "miou_vs_batches", "miou_vs_time", "power", "loss"}
    assert all(c.drawn for c in built.charts)
    html = (built.out_dir / "index.html").read_text()
    for c in built.charts:
        data = c.path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        assert base64.b64encode(data).decode() in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "not reached" in html and "not measured" in html


def test_energy_less_run_is_on_the_time_chart_only(built):
    charts = {c.name: c for c in built.charts}
    assert "segformer" in charts["miou_vs_time"].plotted
    assert "segformer" in charts["miou_vs_energy"].left_out
    assert "segformer" not in charts["miou_vs_energy"].plotted
    assert set(charts["miou_vs_energy"].plotted) == {"unet", "deeplab"}
    assert charts["power"].left_out == ["segformer"]


def test_target_override_recomputes_from_the_series(runs_dir):
    runs = load_local(runs_dir / "unet")
    (row,) = report.compare(runs, report.report_target(runs, 8.0))
    # first validation >= 8: batch 20 (mIoU 9), at 20 x 0.5 + 2 x 1 = 12 s on the wall axis
    assert row.reached and row.target_basis == "recomputed" and row.batches_to_target == 20
    assert row.time_to_target_s == pytest.approx(12.0)
    assert row.energy_to_target_wh == pytest.approx(200 * 12 / 3600)
    assert "recomputed" in row.notes[0] and "16" in row.notes[0]
    (row,) = report.compare(runs, 30.0)
    assert not row.reached and row.energy_to_target_wh is None


def test_unknown_target_falls_back_to_the_trials_own_figures(tmp_path):
    write_run(tmp_path / "a", run_records(power_w=200.0, val_s=1.0))  # no checkpoint: target unknown
    runs = load_local(tmp_path / "a")
    assert runs[0].target_miou is None and report.report_target(runs) is None
    (row,) = report.compare(runs, None)
    assert row.reached and row.target_basis == "trial"
    assert row.time_to_target_s == pytest.approx(18.0)
    from shared.report.tables import to_markdown
    assert "Target mIoU: unknown" in to_markdown([row], [], None)


def test_different_targets_and_bad_target_are_refused(tmp_path):
    write_run(tmp_path / "a", run_records(), {"target_miou": 16})
    write_run(tmp_path / "b", run_records(), {"target_miou": 20})
    runs = load_inputs([str(tmp_path / "a"), str(tmp_path / "b")])
    # the runs are named by what differs between them: here their targets
    assert [r.label for r in runs] == ["a (target_miou=16)", "b (target_miou=20)"]
    with pytest.raises(ReportError, match=r"different targets \(a \(target_miou=16\): 16, "
                                          r"b \(target_miou=20\): 20\).*--target-miou"):
        build_report(runs, tmp_path / "out")
    assert report.report_target(runs, 18) == report.Target("miou", 18.0, False)
    with pytest.raises(ReportError, match=r"--target-miou must be a number in \(0, 100\], got 150"):
        report.report_target(runs, 150)


def test_a_decreasing_target_is_compared_and_drawn_in_its_direction(tmp_path, capsys):
    """Issue 15: a run whose target is validation_loss <= 1.0 (losses 2.14, 1.58, 1.11, 0.97
    at batches 10..40 from mIoU 4, 9, 17, 21): reached at batch 40, not at the mIoU crossing."""
    write_run(tmp_path / "loss", run_records(target_metric="validation_loss", target=1.0,
                                             smaller_is_better=True, power_w=200.0))
    runs = load_local(tmp_path / "loss")
    assert runs[0].target == report.Target("validation_loss", 1.0, True)
    rep = build_report(runs, tmp_path / "out")
    (row,) = rep.rows
    assert (row.reached, row.target_basis, row.batches_to_target) == (True, "trial", 40)
    assert (row.target_metric, row.target_value, row.target_smaller_is_better) == ("validation_loss", 1.0, True)
    assert row.best_value == pytest.approx(3.0 / 3.1) == row.value_at_target  # the smallest loss
    assert row.target_miou is None and row.best_miou == 21.0  # the mIoU columns stay mIoU's
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "Target: validation loss <= 1." in md
    assert "validation validation" not in md and "Validation_loss" not in md
    assert "the validation loss at the last validation and at the best one" in md
    charts = {c.name: c for c in rep.charts}
    assert charts["validation_loss_vs_energy"].plotted == ["loss"]
    assert charts["validation_loss_vs_energy"].title == "Validation loss vs energy (Wh)"
    assert (tmp_path / "out" / "validation_loss_vs_time.png").read_bytes()[:8] == PNG_MAGIC
    csv_row = next(csv.DictReader(io.StringIO((tmp_path / "out" / "comparison.csv").read_text())))
    assert (csv_row["target_metric"], csv_row["target_smaller_is_better"]) == ("validation_loss", "yes")
    # another value of the same metric, in the run's direction: <= 1.2 first at batch 30
    (row,) = report.compare(runs, report.report_target(runs, 1.2, flag="--target-value"))
    assert (row.batches_to_target, row.target_basis) == (30, "recomputed")
    assert "own target was validation loss <= 1" in row.notes[0]
    with pytest.raises(ReportError, match="--target-value must be a number > 0, got -1"):
        build_report(runs, tmp_path / "o4", target_value=-1)
    assert main([str(tmp_path / "loss"), "--target-metric", "miou", "--out", str(tmp_path / "o")]) == 2
    assert "--target-metric needs --target-value" in capsys.readouterr().err


# ----------------------------------------------------------------------------- series
def test_power_intervals_constant_power_and_gaps():
    recs = run_records(power_w=250.0, batch_s=0.4, val_s=0.5)
    energy = timeline(Run("r", "x", recs))["energy"]
    ivs = power_intervals(energy)
    assert len(ivs) == len(energy) == 8
    assert all(w == pytest.approx(250.0) for _, _, w in ivs)
    # contiguous on the wall axis, starting at the meter start
    assert ivs[0][0] == pytest.approx(0.0)
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(ivs, ivs[1:]))
    # an unmeasured report is a gap, not 0 W
    energy[3].metrics = {**energy[3].metrics, "energy_wh": None}
    ivs = power_intervals(energy)
    assert len(ivs) == 6 and all(w == pytest.approx(250.0) for _, _, w in ivs)


def test_timeline_restart_removes_pause_and_replaces_redone_reports():
    def rec(group, steps, t, **m):
        return {"group": group, "steps_completed": steps, "time": T0 + t, "metrics": m}
    recs = [rec("run", 0, 0), rec("training", 10, 10, loss=1.0), rec("training", 20, 20, loss=0.9),
            rec("training", 30, 30, loss=0.8),
            # paused 1000 s; resumed from the checkpoint at batch 20
            rec("run", 0, 1030), rec("training", 30, 1040, loss=0.7), rec("training", 40, 1050, loss=0.6)]
    tr = timeline(Run("r", "x", recs))["training"]
    assert [p.steps for p in tr] == [10, 20, 30, 40]
    assert [p.metrics["loss"] for p in tr] == [1.0, 0.9, 0.7, 0.6]
    assert [p.elapsed_s for p in tr] == pytest.approx([10, 20, 40, 50])


def test_timeline_the_run_update_after_a_validation_is_no_restart():
    def rec(group, steps, t, **m):
        return {"group": group, "steps_completed": steps, "time": T0 + t, "metrics": m}
    # the run group again after the validation at batch 10 (peak memory): time runs on
    recs = [rec("run", 0, 0, reported_at="start"), rec("training", 10, 10, loss=1.0),
            rec("run", 10, 15, reported_at="validation", peak_memory_mb=9.0),
            rec("validation", 10, 15, miou=3.0), rec("training", 20, 25, loss=0.9)]
    tl = timeline(Run("r", "x", recs))
    assert [p.elapsed_s for p in tl["training"]] == pytest.approx([10, 25])
    assert tl["validation"][0].elapsed_s == pytest.approx(15)
    assert Run("r", "x", recs).info()["peak_memory_mb"] == 9.0


# ----------------------------------------------------------------------------- scaling
def test_scaling_speedup_and_efficiency_hand_values(tmp_path):
    # same curve at 1, 2, 4 slots; target at batch 30: T = 30 x (1.0, 0.6, 0.4) = 30, 18, 12 s
    for slots, bs, watts in ((1, 1.0, 200.0), (2, 0.6, 400.0), (4, 0.4, 800.0)):
        write_run(tmp_path / f"unet-{slots}", run_records(slots=slots, gbs=8 * slots, batch_s=bs,
                                                          power_w=watts), HP)
    write_run(tmp_path / "segformer", run_records(model="segformer", power_w=None), HP)
    rep = build_report(load_inputs([str(tmp_path)]), tmp_path / "out")
    pts = {p.slots: p for p in rep.scaling}
    assert set(pts) == {1, 2, 4} and all(p.model == "unet" for p in rep.scaling)
    assert [pts[n].time_to_target_s for n in (1, 2, 4)] == pytest.approx([30.0, 18.0, 12.0])
    assert pts[1].speedup == pytest.approx(1.0) and pts[1].efficiency == pytest.approx(1.0)
    assert pts[2].speedup == pytest.approx(30 / 18) and pts[2].efficiency == pytest.approx(30 / 18 / 2)
    assert pts[4].speedup == pytest.approx(2.5) and pts[4].efficiency == pytest.approx(0.625)
    assert [pts[n].energy_to_target_wh for n in (1, 2, 4)] == pytest.approx(
        [200 * 30 / 3600, 400 * 18 / 3600, 800 * 12 / 3600])
    scaling_csv = list(csv.DictReader((rep.out_dir / "scaling.csv").open()))
    assert [float(r["efficiency"]) for r in scaling_csv] == pytest.approx([1.0, 30 / 36, 0.625])
    png = rep.out_dir / "scaling.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert base64.b64encode(png.read_bytes()).decode() in (rep.out_dir / "index.html").read_text()
    assert "## Scaling" in (rep.out_dir / "comparison.md").read_text()


def test_scaling_baseline_is_the_smallest_slot_count():
    from shared.report.tables import Row, scaling
    base = dict(source="x", model="m", params=1, global_batch_size=8, target_miou=16.0,
                reached=True, target_basis="trial", batches_to_target=1, miou_at_target=16.0,
                energy_to_target_wh=None, energy_wh=None, avg_power_w=None, images=None,
                j_per_image=None, final_miou=None, best_miou=None, facility_wh=None, co2e_g=None,
                energy_sources=None, nodes=None, nodes_measured=None, coverage=None, estimate=False)
    rows = [Row(label="a", slots=2, time_to_target_s=100.0, **base),
            Row(label="b", slots=8, time_to_target_s=40.0, **base),
            Row(label="c", slots=8, time_to_target_s=60.0, **base)]  # repeats are averaged
    p2, p8 = scaling(rows)
    assert p8.time_to_target_s == 50.0 and p8.speedup == 2.0 and p8.efficiency == 0.5
    assert p8.baseline_slots == 2 and p8.runs == 2


# ----------------------------------------------------------------------------- CLI, bad input
def test_cli_local(runs_dir, tmp_path, capsys):
    assert main([str(runs_dir), "--out", str(tmp_path / "rep")]) == 0
    out = squeeze(capsys.readouterr().out)
    assert "| unet | unet | 6.70 | 1 | yes | 18.0 | 1.000 | 200.0 | 14.4 |" in out
    assert (tmp_path / "rep" / "index.html").is_file()


@pytest.mark.parametrize("setup, arg, message", [
    (None, "missing_dir", r"neither a run directory nor a Determined experiment ID"),
    ("empty", "d", r"d: no metrics.jsonl in it or in its subdirectories"),
    ("badjson", "d", r"d/metrics.jsonl: line 1 is not valid JSON"),
    ("badrecord", "d", r"d/metrics.jsonl: record 1 is not a metric report"),
])
def test_cli_bad_local_input_names_it(tmp_path, capsys, monkeypatch, setup, arg, message):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "d"
    if setup:
        d.mkdir()
    if setup == "badjson":
        (d / "metrics.jsonl").write_text('{"group": \n{"group": "run"}\n')
    if setup == "badrecord":
        (d / "metrics.jsonl").write_text(json.dumps({"group": "run", "time": "noon"}) + "\n")
    assert main([arg, "--out", str(tmp_path / "o")]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_bad_output_dir_and_target(runs_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([str(runs_dir / "unet"), "--out", str(blocker / "rep")]) == 2
    assert re.search(r"file/rep: cannot create the output directory", capsys.readouterr().err)
    assert main([str(runs_dir / "unet"), "--target-miou", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--target-miou must be a number in (0, 100], got 0.0" in capsys.readouterr().err
    with pytest.raises(ReportError, match="nothing to report on"):
        load_inputs([])
    with pytest.raises(ReportError, match="nothing to report on: no runs"):
        build_report([], tmp_path / "o")


# ----------------------------------------------------------------------------- master
PASSWORD = "Secret123"
TOKEN = "tok-alice"


class _MasterHandler(BaseHTTPRequestHandler):
    """Answers as a Determined 0.38 master would, from the recorded responses."""

    def log_message(self, *args):
        pass

    def _send(self, code, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, what):
        self._send(404, {"code": 5, "message": f"{what} not found", "details": []})

    def do_POST(self):
        self.server.requests.append(("POST", self.path))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        hashed = hashlib.sha512(("GubPEmmotfiK9TMD6Zdw" + PASSWORD).encode()).hexdigest()
        if self.path == "/api/v1/auth/login":
            if body.get("username") == "alice" and body.get("password") == hashed:
                return self._send(200, {"token": TOKEN, "user": {
                    "id": 2, "username": "alice", "admin": False, "active": True}})
            return self._send(403, {"code": 7, "message": "invalid credentials", "details": []})
        self._not_found(self.path)

    def do_GET(self):
        url = urlparse(self.path)
        self.server.requests.append(("GET", url.path + ("?" + url.query if url.query else "")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"code": 16, "message": "unauthenticated", "details": []})
        master = FIXTURES / "master"
        if url.path == "/api/v1/me":
            return self._send(200, {"user": {"id": 2, "username": "alice", "admin": False, "active": True}})
        if url.path == "/api/v1/experiments/77":  # an answer the SDK cannot parse
            return self._send(200, {"experiment": {"id": 77}})
        m = re.fullmatch(r"/api/v1/experiments/(\d+)(/trials)?", url.path)
        if m:
            f = master / f"experiment_{m.group(1)}{'_trials' if m.group(2) else ''}.json"
            return self._send(200, f.read_bytes()) if f.is_file() else self._not_found(
                f"experiment {m.group(1)}")
        if url.path == "/api/v1/trials/metrics/trial_metrics":
            q = parse_qs(url.query)
            (trial,), (group,) = q["trialIds"], q["group"]
            f = master / f"trial_{trial}_{group}.ndjson"
            return self._send(200, f.read_bytes() if f.is_file() else b"", "application/x-ndjson")
        self._not_found(url.path)


@pytest.fixture
def master(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MasterHandler)
    server.requests = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    # the SDK's token cache goes to a temporary directory, not the user's
    monkeypatch.setenv("DET_DEBUG_CONFIG_PATH", str(tmp_path / "detconfig"))
    for var in ("DET_MASTER", "DET_MASTER_ADDR", "DET_USER", "DET_PASS", "DET_USER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_master_experiments_through_the_sdk_mixed_with_local(master, runs_dir, tmp_path, monkeypatch):
    server, url = master
    monkeypatch.setenv("DET_PASS", PASSWORD)
    out = tmp_path / "rep"
    assert main(["--master", url, "--user", "alice", "12", "15", str(runs_dir / "unet"),
                 "--out", str(out)]) == 0
    rows = {r["run"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    # two U-Net runs: each named with what sets it apart from the other (a search point's
    # hyperparameters on the master, none set locally: "unset")
    assert list(rows) == ["exp 12 trial 34 (global_batch_size=16, lr=0.001)", "exp 15 trial 35",
                          "unet (global_batch_size=8, lr=unset)"]
    rows = {k.split(" (")[0]: v for k, v in rows.items()}
    e12 = rows["exp 12 trial 34"]
    # hand values: see make_master_fixtures.py
    assert (e12["model"], e12["slots"], e12["global_batch_size"], e12["target_miou"]) == ("unet", "1", "16", "16.0")
    assert e12["reached_target"] == "yes" and e12["batches_to_target"] == "300"
    assert float(e12["time_to_target_s"]) == pytest.approx(66.0)
    assert float(e12["energy_to_target_wh"]) == pytest.approx(400 * 66 / 3600)
    assert float(e12["avg_power_w"]) == pytest.approx(400.0)
    assert int(e12["images"]) == 6400
    assert float(e12["j_per_image"]) == pytest.approx(5.375)
    assert e12["source"].startswith(url) and "unet-ade20k-1gpu" in e12["source"]
    e15 = rows["exp 15 trial 35"]
    assert e15["reached_target"] == "no" and e15["energy_sources"] == "not measured"
    assert float(e15["final_miou"]) == 12.0
    assert float(rows["unet"]["time_to_target_s"]) == pytest.approx(18.0)
    # the real SDK path: login, experiment, trials, then one metric stream per group and trial
    paths = [p for _, p in server.requests]
    assert paths[0] == "/api/v1/auth/login"
    assert "/api/v1/experiments/12" in paths and any(p.startswith("/api/v1/experiments/15/trials") for p in paths)
    streams = sorted(p for p in paths if p.startswith("/api/v1/trials/metrics/trial_metrics"))
    assert len(streams) == 8 and any("group=energy" in p and "trialIds=34" in p for p in streams)
    # the energy chart shows the master trial that measured energy; the time chart all three
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    # per-class IoU is not held by a master: the table says so for the master's trials
    assert "exp 12 trial 34 (global_batch_size=16, lr=0.001): read from a master" in html


@pytest.mark.parametrize("case, message", [
    ("unknown", r"experiment 99 on http://127\.0\.0\.1:\d+: not found"),
    ("garbled", r"experiment 77 on http://127\.0\.0\.1:\d+: unexpected answer from the master \(KeyError"),
    ("password", r"login to http://127\.0\.0\.1:\d+ as alice failed: .*invalid credentials"),
    ("no_master", r"experiment IDs were given but no master: pass --master URL or set DET_MASTER"),
    ("unreachable", r"cannot reach the Determined master at http://127\.0\.0\.1:\d+"),
])
def test_master_errors_name_the_problem(master, tmp_path, monkeypatch, capsys, case, message):
    server, url = master
    monkeypatch.setenv("DET_PASS", "wrong" if case == "password" else PASSWORD)
    exp = {"unknown": "99", "garbled": "77"}.get(case, "12")
    args = ["--user", "alice", exp, "--out", str(tmp_path / "o")]
    if case == "unreachable":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
    if case != "no_master":
        args = ["--master", url] + args
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)


def test_energy_split_and_bridged_time_are_shown(tmp_path):
    """Issue 12: the table shows the energy per phase, and the notes the bridged time."""
    from shared.report.tables import SPLIT_COLUMN, display_cells, to_csv
    records = run_records(model="unet", params=1_000_000, gbs=8, batch_s=0.5, val_s=1.0,
                          power_w=200.0)
    last = [r for r in records if r["group"] == "energy"][-1]["metrics"]
    total = last["energy_wh"]
    split = {"setup_wh": 0.1 * total, "train_wh": 0.6 * total, "validation_wh": 0.25 * total,
             "checkpoint_wh": 0.05 * total}
    last.update(split, bridged_s=12.5)
    write_run(tmp_path / "unet", records, HP)
    [row] = build_report(load_inputs([str(tmp_path / "unet")]), tmp_path / "out").rows
    assert row.phase_wh == {k[:-3]: pytest.approx(v) for k, v in split.items()}
    cell = display_cells(row)[SPLIT_COLUMN]
    assert cell == "0.128 / 0.767 / 0.319 / 0.0639"  # setup / train / val / ckpt, 3 digits
    assert any("12.5 s of energy bridged" in n for n in row.notes)
    [csv_row] = list(csv.DictReader(io.StringIO(to_csv([row]))))
    assert float(csv_row["validation_wh"]) == pytest.approx(split["validation_wh"])
    assert sum(float(csv_row[k]) for k in split) == pytest.approx(total)


# ------------------------------------------------------------- what is measured, and only that
def _png_names(out):
    return sorted(p.name for p in out.glob("*.png"))


def test_no_energy_anywhere_gives_one_line_per_energy_chart_not_an_empty_frame(tmp_path, capsys):
    """A machine without a power counter: the runs report an energy group without energy (as
    the hook does when no source opens). The energy charts are not drawn; each is one line
    saying why and how to get a counter; the charts with data come first."""
    recs = run_records(power_w=200.0)
    for r in recs:  # the hook ran, no source measured anything
        if r["group"] == "energy":
            r["metrics"].update(energy_wh=None, gpu_wh=None, sources="none")
        r["metrics"].pop("energy_wh", None) if r["group"] == "validation" else None
        if r["group"] == "validation":
            r["metrics"].pop("energy_to_target_wh", None)
    write_run(tmp_path / "runs" / "laptop", recs, HP)
    out = tmp_path / "out"
    out.mkdir()
    (out / "power.png").write_bytes(PNG_MAGIC)  # an earlier report's chart: no longer true
    rep = build_report(load_inputs([str(tmp_path / "runs")]), out)
    charts = {c.name: c for c in rep.charts}
    assert not charts["miou_vs_energy"].drawn and not charts["power"].drawn
    assert [c.name for c in rep.charts][:3] == ["miou_vs_batches", "miou_vs_time", "loss"]
    assert _png_names(out) == ["loss.png", "miou_vs_batches.png", "miou_vs_time.png"]
    why = charts["power"].missing
    for hint in ("no run measured energy", "RAPL", "container", "NVML", "BMC"):
        assert hint in why
    html = (out / "index.html").read_text()
    assert len(re.findall(r'src="data:image/png', html)) == 3
    assert html.count('<p class="missing"') == 1  # the two energy charts share one line
    assert "Validation mIoU vs energy (Wh)</b> and <b>Power over time</b>: not drawn" in html
    md = (out / "comparison.md").read_text()
    assert "- Validation mIoU vs energy (Wh) and Power over time: not drawn, no run measured energy" in md
    # energy off altogether (energy.enabled: false): said so, not blamed on the machine
    write_run(tmp_path / "off" / "run", run_records(power_w=None), HP)
    rep = build_report(load_inputs([str(tmp_path / "off")]), tmp_path / "out2")
    assert "energy hook was off" in {c.name: c for c in rep.charts}["power"].missing
    assert main([str(tmp_path / "off"), "--out", str(tmp_path / "out3")]) == 0
    assert "and Power over time: not drawn, no run reported energy" in capsys.readouterr().out


def test_mious_against_batches_star_at_the_crossing(built):
    c = {c.name: c for c in built.charts}["miou_vs_batches"]
    assert c.drawn and c.plotted == ["unet", "segformer", "deeplab"] and not c.left_out
    assert "batches" in c.title and "any machine" in c.caption


def _per_class(records, names, values_by_step):
    for steps, values in values_by_step.items():
        records.append({"group": "per_class_iou", "steps_completed": steps, "time": T0 + steps,
                        "metrics": {f"iou/{n}": v for n, v in zip(names, values)}})
    return records


def test_per_class_iou_best_and_worst_classes_by_name(tmp_path):
    names = ["wall", "floor", "sky", "tree", "road", "person", "car", "door", "lamp", "sign",
             "bed", "cat"]
    last = [80.0, 70.0, 95.0, 40.0, 60.0, 10.0, 5.0, 50.0, 30.0, 20.0, 65.0, None]
    recs = _per_class(run_records(power_w=200.0), names,
                      {10: [1.0] * 12, 40: last})
    write_run(tmp_path / "named", recs, HP)
    write_run(tmp_path / "indexed", _per_class(run_records(power_w=200.0), ["0", "1", "2"],
                                               {40: [12.5, 90.0, None]}), HP)
    write_run(tmp_path / "none", run_records(power_w=200.0), HP)
    rep = build_report(load_inputs([str(tmp_path / d) for d in ("named", "indexed", "none")]),
                       tmp_path / "out")
    (sec,) = [s for s in rep.sections if s.name == "per_class_iou"]
    rows = {r[0]: dict(zip(sec.header, r)) for r in sec.rows}
    assert set(rows) == {"named", "indexed"}
    named = rows["named"]
    assert named["batches"] == "40" and named["classes scored"] == "11 of 12" and named["absent"] == "1"
    assert named["best"] == "sky 95.0, wall 80.0, floor 70.0, bed 65.0, road 60.0"
    assert named["worst"] == "car 5.0, person 10.0, sign 20.0, lamp 30.0, tree 40.0"
    assert rows["indexed"]["best"] == "class 1 90.0" and rows["indexed"]["worst"] == "class 0 12.5"
    html = (tmp_path / "out" / "index.html").read_text()
    assert "Per-class IoU" in html and "sky 95.0" in html
    assert "## Per-class IoU" in (tmp_path / "out" / "comparison.md").read_text()
    lines = list(csv.DictReader(io.StringIO((tmp_path / "out" / "per_class_iou.csv").read_text())))
    assert len(lines) == 15 and {"run": "named", "batches": "40", "class": "cat", "iou": ""} in lines


def _objects_run(pf, hnf, recall_gain):
    recs = run_records(power_w=None, target_metric="validation_loss", target=0.05,
                       smaller_is_better=True, mious=(1, 2, 3, 4))
    for r in recs:
        if r["group"] == "validation":
            k = r["steps_completed"] / 10
            r["metrics"] = {"validation_loss": 0.4 / k, "object_precision": 10.0 * k,
                            "object_recall": min(100.0, recall_gain * k),
                            "object_f1": 5.0 * k, "false_positives_per_image": 8.0 / k,
                            "average_precision": 7.0 * k}
    hp = {"positive_fraction": pf, "hard_negative_fraction": hnf, "lr": 0.003,
          "data_dir": f"/tmp/data-{pf}", "global_batch_size": 8}
    return recs, hp


def test_rare_objects_report_names_runs_by_their_differences_and_shows_object_metrics(tmp_path, capsys):
    """The rare-objects demo's three runs (directories 1, 2, 3) are named by what differs
    between them; their object metrics are in a table and against batches; without energy
    the energy chart is one line."""
    for n, (pf, hnf, gain) in enumerate(((0, 0, 5.0), (0.5, 0, 25.0), (0.5, 0.25, 30.0)), 1):
        recs, hp = _objects_run(pf, hnf, gain)
        for r in recs:
            if r["group"] == "run":
                r["metrics"]["model"] = "rare_objects"
        write_run(tmp_path / "runs" / str(n), recs, hp)
    rep = build_report(load_inputs([str(tmp_path / "runs")]), tmp_path / "out")
    labels = [r.label for r in rep.rows]
    assert labels == ["1 (positive_fraction=0, hard_negative_fraction=0)",
                      "2 (positive_fraction=0.5, hard_negative_fraction=0)",
                      "3 (positive_fraction=0.5, hard_negative_fraction=0.25)"]
    (sec,) = [s for s in rep.sections if s.name == "objects"]
    row = dict(zip(sec.header, sec.rows[2]))
    assert row["object recall (%)"] == "100.00" and row["object precision (%)"] == "40.00"
    assert row["false positives per image"] == "2.00" and row["best object F1 (%)"] == "20.00"
    charts = {c.name: c for c in rep.charts}
    assert charts["objects_vs_batches"].drawn and len(charts["objects_vs_batches"].plotted) == 3
    assert "energy hook was off" in charts["objects_vs_energy"].missing
    html = (tmp_path / "out" / "index.html").read_text()
    assert "Object metrics (rare-objects recipe)" in html and "validation validation" not in html
    # a --label per run replaces the names; the count must fit
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "o2"), "--label", "random tiles",
                 "--label", "balanced", "--label", "balanced + mining"]) == 0
    printed = squeeze(capsys.readouterr().out)
    assert "| balanced + mining | rare_objects |" in printed
    assert "## Object metrics" in printed and "| balanced + mining | 40 | 40.00 | 100.00 |" in printed
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "o3"), "--label", "a"]) == 2
    assert ("1 --label given for 3 runs (1, 2, 3): give one per run, in the order the runs are "
            "listed") in capsys.readouterr().err
