"""benchmarks/shape_warmup.py on CPU: distinct shapes per variant, a model's row with every
variant, bad input (the switch of cuDNN inside grouped convolutions: tests/test_inference.py)."""
from __future__ import annotations

import json

import pytest
from mdtables import squeeze
from benchmarks import shape_warmup as sw


def test_shapes_never_repeat_and_alternate_orientation():
    all_shapes = [s for v in range(len(sw.VARIANTS)) for s in sw.shapes_for(v, 8)]
    assert len(set(all_shapes)) == len(all_shapes) == 8 * len(sw.VARIANTS)
    first = sw.shapes_for(0, 4)
    assert first[0][0] == 512 < first[0][1] and first[1][1] == 512 < first[1][0]
    assert sw.shapes_for(1, 2, short=64)[0] == (64, 64 + 16)


def test_a_model_row_and_its_table(tmp_path, capsys):
    out = tmp_path / "w.json"
    assert sw.main(["--device", "cpu", "--models", "segformer", "--shapes", "1",
                    "--short-side", "64", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["status"] == "ok" and row["grouped_convs"] > 0  # Mix-FFN's depthwise convs
    for v in sw.VARIANTS:
        assert row[v]["first_ms"] > 0 and row[v]["second_ms"] > 0 and len(row[v]["shapes"]) == 1
    text = squeeze(capsys.readouterr().out)
    assert "| segformer | native depthwise |" in text and "warm-up s over 1 new shapes" in text


def test_bad_options(tmp_path, capsys):
    for argv, message in ((["--shapes", "0"], "--shapes 0: must be >= 1"),
                          (["--short-side", "8"], "--short-side 8: must be >= 32"),
                          (["--out", str(tmp_path / "no" / "w.json")], "does not exist")):
        with pytest.raises(SystemExit):
            sw.main(["--device", "cpu", *argv])
        assert message in capsys.readouterr().err
