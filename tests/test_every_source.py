"""Every registered energy source, whatever it is, passes a round trip against its fake: built
by the registry's selection from its declared variables and options, opened, driven, read
(only the components it declares, within the fake's truth) and closed. The sources come from
the registry (``shared.energy.sources``) and their fakes from ``tests/fakes/rigs/<name>.py``:
adding a source edits no test, and a source without a fake fails here, naming the file."""
from __future__ import annotations

import pathlib
import sys

import pytest

from shared.energy.options import validate_options
from shared.energy.select import build_sources
from shared.energy.sources import registered_sources, source_class

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fakes import rigs  # noqa: E402

SOURCES = [cls.name for cls in registered_sources()]


@pytest.mark.parametrize("name", SOURCES)
def test_source_round_trip_against_its_fake(name, tmp_path, monkeypatch):
    cls = source_class(name)
    with rigs.rig_for(name)(tmp_path, monkeypatch) as rig:
        # as the training hook builds it: options checked, defaults in, unset ones dropped
        options = {k: v for k, v in validate_options(rig.options, env=rig.env).items()
                   if v is not None}
        [source] = build_sources(name, env=rig.env, gpu_indices=[0], node_reader=True,
                                 options=options)
        assert type(source) is cls
        source.open()
        try:
            rig.drive(source)
            got = source.read()
            bounds = rig.expect(source)
        finally:
            source.close()
        source.close()  # twice is safe
    assert set(got) == set(bounds) and set(got) <= set(cls.covers), (got, cls.covers)
    for component, (low, high) in bounds.items():
        assert low <= got[component] <= high, (component, got[component], (low, high))
    assert source.health.failures == 0 and source.coverage() == 1.0
    assert isinstance(source.describe(), str) and source.label.startswith(name)


def test_every_fake_belongs_to_a_registered_source():
    assert [n for n in rigs.rig_names() if n not in SOURCES] == []


def test_a_source_without_a_fake_is_named_with_the_file_to_add():
    with pytest.raises(LookupError, match=r"energy source 'pdu' has no fake: write "
                                          r".*tests/fakes/rigs/pdu\.py with a context manager "
                                          r"rig\(tmp_path, monkeypatch\)"):
        rigs.rig_for("pdu")
