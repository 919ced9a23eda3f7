"""RedfishSource against a real HTTP(S) BMC simulator on loopback (tests/fakes/bmc_sim.py)."""
from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import json
import logging
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from shared.energy.aggregate import RankEnergy, TrialEnergy, combine
from shared.energy.http import HttpFailure, redact_url
from shared.energy.meter import EnergyMeter
from shared.energy.sources.base import SourceUnavailable
from shared.energy.sources.node_identity import NodeIdentity
from shared.energy.sources.redfish import (BadReading, BasicCredentials, RedfishSource,
                                           load_credentials, reading_at)

FAKES = Path(__file__).resolve().parent / "fakes"
sys.path.insert(0, str(FAKES))
from bmc_sim import BASEBOARD_SHARE, BmcSimulator  # noqa: E402

USER, PASSWORD = "energy-reader", "s3cr:et-Pa55"  # the colon checks the user:password split
WATTS = 500.0
PERIOD = 0.02
# Holes longer than this are not bridged. The sampler's default (3 periods, 60 ms here) is
# meant for periods of seconds; on a loaded 2-core CI machine a thread can be descheduled for
# longer than 60 ms, so tests about accuracy bridge up to 0.25 s. The hole tests use the
# failures' own length (>1 s), far above it.
MAX_GAP = 0.25


@pytest.fixture
def sources() -> Iterator[List[RedfishSource]]:
    """Sources created by a test; closed at teardown even when the test fails."""
    made: List[RedfishSource] = []
    yield made
    for source in made:
        source.close()


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> List[BaseException]:
    """Exceptions that escaped any thread (the sampling thread must never let one out)."""
    errors: List[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    return errors


def make(sources: List[RedfishSource], url: str, **kwargs) -> RedfishSource:
    kwargs.setdefault("sample_period_s", PERIOD)
    kwargs.setdefault("max_gap_s", MAX_GAP)
    source = RedfishSource(url, **kwargs)
    sources.append(source)
    return source


@dataclasses.dataclass
class Window:
    """What ``run`` read and when: the joules, the wall clock before the source opened and
    after the read, and the sampler's first good sample and its latest one before the read."""

    joules: float
    t_before: float
    t_read: float
    first_sample: float
    last_sample_before_read: float


def run(source: RedfishSource, seconds: float) -> Window:
    """Open, let it sample, read."""
    t_before = time.monotonic()
    source.open()
    time.sleep(seconds)
    last = source.sampler.last_sample_time()
    joules = source.read()["node"]
    return Window(joules, t_before, time.monotonic(), source.sampler.first_sample_time(), last)


def assert_energy(w: Window, watts: float) -> None:
    """The documented bias, from the times measured (not from how fast the machine is): the
    integral covers the samples' span, at least up to the last good sample taken before the
    read, and never runs ahead of the read."""
    assert w.t_before <= w.first_sample <= w.last_sample_before_read <= w.t_read
    assert watts * (w.last_sample_before_read - w.first_sample) - 1e-6 <= w.joules
    assert w.joules <= watts * (w.t_read - w.first_sample) + 1e-6


def wait_for_output(proc: subprocess.Popen, hang_s: float = 600.0) -> None:
    """Until ``proc`` prints a line: as long as it lives (an interpreter starting on a loaded
    machine takes what it takes), failing at once if it exits; ``hang_s`` guards a hang."""
    start = time.monotonic()
    while not select.select([proc.stdout], [], [], 1.0)[0]:
        assert proc.poll() is None, f"the simulator exited ({proc.returncode}) before printing its URL"
        assert time.monotonic() - start < hang_s, "the simulator printed nothing"


def stop(proc: subprocess.Popen) -> None:
    """End the simulator: SIGTERM, and SIGKILL if a loaded machine keeps it past a minute."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_credentials(tmp_path: Path, content: str, name: str = "bmc.cred") -> Path:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(0o600)
    return path


def assert_secret_absent(*texts: str) -> None:
    header = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for text in texts:
        assert PASSWORD not in text
        assert header not in text


# -- the three resource shapes, direct and discovered -----------------------------------------
RESOURCE_PATHS = {"ilo": "/redfish/v1/Chassis/1/Power/",
                  "envmetrics": "/redfish/v1/Chassis/1/EnvironmentMetrics",
                  "powersubsystem": "/redfish/v1/Chassis/1/PowerSubsystem"}
EXPECTED_KIND = {"ilo": "Power", "envmetrics": "EnvironmentMetrics",
                 "powersubsystem": "PowerSubsystem"}


@pytest.mark.parametrize("mode", ["ilo", "envmetrics", "powersubsystem"])
@pytest.mark.parametrize("how", ["service_root", "resource"])
def test_constant_power_integrates_to_watts_times_time(mode, how, sources, caplog):
    caplog.set_level(logging.INFO)
    with BmcSimulator(WATTS, mode) as sim:
        url = sim.url if how == "service_root" else sim.base_url + RESOURCE_PATHS[mode]
        source = make(sources, url)
        window = run(source, 0.8)
        source.close()
    assert source.resource is not None
    assert source.resource.kind == EXPECTED_KIND[mode]
    # Discovery must not pick the GPU baseboard (60% of the node) or the drive enclosure.
    assert source.resource.url.rstrip("/").endswith(RESOURCE_PATHS[mode].rstrip("/"))
    # exactly constant watts over the span its samples cover (the thread may lag on a loaded
    # machine: the span, not the wall clock, is what the integral covers) ...
    # (taken after close(): the thread may have sampled again between the read and the close)
    sampler = source.sampler
    span = sampler.last_sample_time() - sampler.first_sample_time()
    assert sampler.energy_j() == pytest.approx(WATTS * span, rel=1e-9)
    assert window.joules <= sampler.energy_j() + 1e-9
    # ... and that span is the window, to the documented lag
    assert_energy(window, WATTS)
    assert source.health.failures == 0 and source.health.attempts > 10  # 40 expected; a loaded machine samples late
    chosen = [r.getMessage() for r in caplog.records if "node power from" in r.getMessage()]
    assert len(chosen) == 1 and EXPECTED_KIND[mode] in chosen[0]


def test_bare_host_url_means_the_service_root(sources):
    with BmcSimulator(WATTS, "envmetrics") as sim:
        source = make(sources, sim.base_url)
        source.open()
        assert source.resource.url == sim.base_url + "/redfish/v1/Chassis/1/EnvironmentMetrics"


def test_discovery_skips_a_contained_chassis_listed_first(sources):
    with BmcSimulator(WATTS, "envmetrics") as sim:
        # The baseboard is listed first and its EnvironmentMetrics work but cover only part of
        # the node: naming it directly is allowed, discovery must not land there.
        part = make(sources, sim.base_url + "/redfish/v1/Chassis/GPU_Baseboard/EnvironmentMetrics")
        part.open()
        whole = make(sources, sim.url)
        whole.open()
        assert part._read_resource(part.resource) == pytest.approx(WATTS * BASEBOARD_SHARE)
        assert whole._read_resource(whole.resource) == pytest.approx(WATTS)
        assert whole.resource.url == sim.base_url + "/redfish/v1/Chassis/1/EnvironmentMetrics"


def test_readings_follow_a_power_change(sources):
    with BmcSimulator(300.0, "ilo") as sim:
        source = make(sources, sim.url)
        source.open()
        t_opened = time.monotonic()
        time.sleep(0.5)
        sim.watts = 700.0
        t_switch = time.monotonic()
        time.sleep(0.5)
        joules = source.read()["node"]
        t_read = time.monotonic()
    truth = 300.0 * (t_switch - t_opened) + 700.0 * (t_read - t_switch)
    assert joules == pytest.approx(truth, rel=0.05)


def test_psu_sum_and_absent_slot(sources):
    with BmcSimulator(WATTS, "powersubsystem") as sim:
        source = make(sources, sim.url)
        source.open()
        # Two metrics documents (the absent third slot is skipped), summed to the node input.
        assert len(source.resource.read_urls) == 2
        assert source._read_resource(source.resource) == pytest.approx(WATTS)


# -- credentials ---------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [f"{USER}:{PASSWORD}\n", f"{USER}:{PASSWORD}",
                                     json.dumps({"username": USER, "password": PASSWORD}),
                                     f"{USER}:{PASSWORD}\nsecond line ignored\n"])
def test_credentials_file_formats(tmp_path, content):
    creds = load_credentials(str(write_credentials(tmp_path, content)))
    assert (creds.username, creds.password) == (USER, PASSWORD)
    assert_secret_absent(repr(creds), str(creds))


@pytest.mark.parametrize("content, match", [
    ("", "expected 'user:password' on the first line"),
    ("just-a-password-no-colon\n", "expected 'user:password' on the first line"),
    (":nouser\n", "expected 'user:password'"),
    ('{"username": "u"}', "needs non-empty string fields 'username' and 'password'"),
    ('{"username": "u", "password": ', "starts with '{' but is not valid JSON"),
])
def test_bad_credentials_file_names_the_file_not_the_content(tmp_path, content, match):
    path = write_credentials(tmp_path, content)
    with pytest.raises(SourceUnavailable, match=match) as info:
        load_credentials(str(path))
    assert str(path) in str(info.value)
    assert "just-a-password" not in str(info.value) and "nouser" not in str(info.value)


def test_missing_credentials_file(tmp_path):
    path = tmp_path / "nope.cred"
    env = {"ENERGY_REDFISH_URL": "https://bmc.example", "ENERGY_REDFISH_CREDENTIALS_FILE": str(path)}
    with pytest.raises(SourceUnavailable, match=f"ENERGY_REDFISH_CREDENTIALS_FILE={path}: no such file"):
        RedfishSource.from_env(env, {})


def test_world_readable_credentials_file_warns(tmp_path, caplog):
    path = write_credentials(tmp_path, f"{USER}:{PASSWORD}")
    path.chmod(0o644)
    load_credentials(str(path))
    assert "chmod 600" in caplog.text
    assert_secret_absent(caplog.text)


@pytest.mark.parametrize("fmt", ["line", "json"])
def test_basic_auth_accepted_from_env(fmt, tmp_path, sources, caplog):
    caplog.set_level(logging.DEBUG)
    content = (f"{USER}:{PASSWORD}" if fmt == "line"
               else json.dumps({"username": USER, "password": PASSWORD}))
    cred = write_credentials(tmp_path, content)
    with BmcSimulator(WATTS, "ilo", user=USER, password=PASSWORD) as sim:
        env = {"ENERGY_REDFISH_URL": sim.url, "ENERGY_REDFISH_CREDENTIALS_FILE": str(cred),
               "ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS": "1"}
        source = RedfishSource.from_env(env, {"sample_period_s": PERIOD})
        sources.append(source)
        window = run(source, 0.3)
        source.close()  # before the server goes: a request cut by its shutdown would count
        requests = list(sim.requests)
    assert_energy(window, WATTS)
    assert source.health.failures == 0
    assert requests and all(had_auth for _, had_auth, _ in requests)
    assert all(status == 200 for _, _, status in requests)
    assert_secret_absent(caplog.text, source.describe(), repr(source.credentials))


def test_wrong_credentials_at_open(tmp_path, sources, caplog):
    caplog.set_level(logging.DEBUG)
    cred = write_credentials(tmp_path, f"{USER}:{PASSWORD}")
    with BmcSimulator(WATTS, "ilo", user=USER, password="another-one") as sim:
        env = {"ENERGY_REDFISH_URL": sim.url, "ENERGY_REDFISH_CREDENTIALS_FILE": str(cred),
               "ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS": "1"}
        source = RedfishSource.from_env(env, {})
        sources.append(source)
        with pytest.raises(SourceUnavailable, match="HTTP 401 .*refused the credentials from") as info:
            source.open()
    assert str(cred) in str(info.value)
    assert_secret_absent(str(info.value), caplog.text)


def test_bmc_that_wants_credentials_but_has_none(sources):
    with BmcSimulator(WATTS, "ilo", user=USER, password=PASSWORD) as sim:
        source = make(sources, sim.url)
        with pytest.raises(SourceUnavailable, match="HTTP 401.*wants credentials.*"
                                                    "ENERGY_REDFISH_CREDENTIALS_FILE"):
            source.open()


def test_credentials_revoked_mid_run_are_counted_and_logged_once(tmp_path, sources, caplog,
                                                                  thread_errors):
    caplog.set_level(logging.DEBUG)
    cred = write_credentials(tmp_path, f"{USER}:{PASSWORD}")
    with BmcSimulator(WATTS, "ilo", user=USER, password=PASSWORD) as sim:
        source = make(sources, sim.url, credentials=load_credentials(str(cred)),
                      allow_http_credentials=True, max_backoff_s=0.05)
        source.open()
        time.sleep(0.2)
        sim.password = "rotated"
        time.sleep(0.4)
        source.close()
    assert source.health.failures > 3 and source.health.coverage < 1
    refused = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    assert "HTTP 401" in refused[0].getMessage()
    assert_secret_absent(caplog.text, str(source.health.first_error))
    assert thread_errors == []


def test_credentials_never_sent_over_plain_http_without_the_flag(tmp_path, sources, caplog):
    caplog.set_level(logging.DEBUG)
    cred = write_credentials(tmp_path, f"{USER}:{PASSWORD}")
    with BmcSimulator(WATTS, "ilo", user=USER, password=PASSWORD) as sim:
        env = {"ENERGY_REDFISH_URL": sim.url, "ENERGY_REDFISH_CREDENTIALS_FILE": str(cred)}
        source = RedfishSource.from_env(env, {})
        sources.append(source)
        with pytest.raises(SourceUnavailable, match="plain http and credentials are configured.*"
                                                    "ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS=1"):
            source.open()
        assert sim.requests == []  # not a single request left: nothing could leak
    assert_secret_absent(caplog.text)


def test_credentials_in_the_url_are_refused_and_redacted():
    url = f"https://{USER}:{PASSWORD}@bmc.example/redfish/v1"
    with pytest.raises(SourceUnavailable, match=r"ENERGY_REDFISH_URL=https://\*\*\*@bmc.example/"
                                                r"redfish/v1 contains credentials .*"
                                                "ENERGY_REDFISH_CREDENTIALS_FILE") as info:
        RedfishSource.from_env({"ENERGY_REDFISH_URL": url}, {})
    assert_secret_absent(str(info.value))


@pytest.mark.parametrize("key", ["redfish_password", "bmc_credentials_file", "Redfish_Token"])
def test_secret_looking_hyperparameter_is_refused(key):
    with pytest.raises(ValueError, match=f"energy option '{key}' looks like a credential") as info:
        RedfishSource.from_env({"ENERGY_REDFISH_URL": "https://bmc.example"}, {key: PASSWORD})
    assert_secret_absent(str(info.value))


def test_redirect_is_not_followed(tmp_path, sources):
    cred = write_credentials(tmp_path, f"{USER}:{PASSWORD}")
    with BmcSimulator(WATTS, "ilo") as elsewhere, BmcSimulator(WATTS, "ilo") as sim:
        sim.redirect_to = elsewhere.url
        source = make(sources, sim.url, credentials=load_credentials(str(cred)),
                      allow_http_credentials=True)
        with pytest.raises(SourceUnavailable, match="HTTP 301 redirect from .* not followed"):
            source.open()
        assert elsewhere.requests == []


def test_link_off_the_bmc_is_refused(sources):
    source = make(sources, "https://bmc.example/redfish/v1")
    doc = {"Power": {"@odata.id": "https://elsewhere.example/redfish/v1/Chassis/1/Power"}}
    with pytest.raises(BadReading, match="points outside the BMC"):
        source._link(doc, "Power", source.url)
    same = {"Power": {"@odata.id": "/redfish/v1/Chassis/1/Power"}}
    assert source._link(same, "Power", source.url) == "https://bmc.example/redfish/v1/Chassis/1/Power"


# -- TLS -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> Tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 that serves as its own CA, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmc-sim")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "bmc.pem", folder / "bmc.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_https_with_ca_bundle_and_credentials(tls_files, tmp_path, sources, caplog):
    caplog.set_level(logging.DEBUG)
    cert, key = tls_files
    cred = write_credentials(tmp_path, f"{USER}:{PASSWORD}")
    with BmcSimulator(WATTS, "envmetrics", user=USER, password=PASSWORD, certfile=cert,
                      keyfile=key) as sim:
        assert sim.url.startswith("https://")
        env = {"ENERGY_REDFISH_URL": sim.url, "ENERGY_REDFISH_CREDENTIALS_FILE": str(cred),
               "ENERGY_REDFISH_CA_BUNDLE": cert}  # https: no http-credentials flag needed
        source = RedfishSource.from_env(env, {"redfish_sample_period_s": 0.05})
        sources.append(source)
        window = run(source, 0.5)
        source.close()
        requests = list(sim.requests)
    assert_energy(window, WATTS)
    assert all(had_auth for path, had_auth, _ in requests if path != "/redfish/v1")
    assert "plain http" not in caplog.text
    assert_secret_absent(caplog.text)


def test_https_without_the_ca_fails_verification(tls_files, sources):
    cert, key = tls_files
    with BmcSimulator(WATTS, "ilo", certfile=cert, keyfile=key) as sim:
        source = make(sources, sim.url)
        with pytest.raises(SourceUnavailable, match="TLS certificate verification failed for "
                                                    r"https://127\.0\.0\.1:\d+/redfish/v1 .*"
                                                    "ENERGY_REDFISH_CA_BUNDLE"):
            source.open()


def test_https_insecure_flag_works_and_warns(tls_files, sources, caplog):
    cert, key = tls_files
    with BmcSimulator(WATTS, "ilo", certfile=cert, keyfile=key) as sim:
        env = {"ENERGY_REDFISH_URL": sim.url, "ENERGY_REDFISH_INSECURE": "1"}
        source = RedfishSource.from_env(env, {"sample_period_s": 0.05})
        sources.append(source)
        source.open()
        assert source.read()["node"] >= 0.0
    assert "TLS certificate verification is OFF" in caplog.text


def test_missing_ca_bundle_is_named(tmp_path):
    env = {"ENERGY_REDFISH_URL": "https://bmc.example", "ENERGY_REDFISH_CA_BUNDLE": str(tmp_path / "ca.pem")}
    with pytest.raises(SourceUnavailable, match=f"ENERGY_REDFISH_CA_BUNDLE={tmp_path / 'ca.pem'}: no such file"):
        RedfishSource.from_env(env, {})


# -- failures ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure, match", [
    ("500", r"HTTP 500 Internal Server Error from http://127\.0\.0\.1:\d+/redfish/v1"),
    ("garbage", "is not valid JSON"),
    ("timeout", r"no answer from .* within 0\.2 s \(timeout\)"),
])
def test_open_reports_why_the_bmc_cannot_be_read(failure, match, sources):
    with BmcSimulator(WATTS, "ilo", hang_s=2.0) as sim:
        sim.failure = failure
        source = make(sources, sim.url, timeout_s=0.2)
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailable, match=match):
            source.open()
        assert time.monotonic() - t0 < 1.5  # the timeout is honoured, not the BMC's hang


@pytest.mark.parametrize("mode, match", [
    ("ilo", r"PowerControl\[0\] missing in"),
    ("envmetrics", r"PowerWatts.Reading is null, not a number"),
    ("powersubsystem", r"InputPowerWatts.Reading is null, not a number"),
])
def test_missing_reading_is_a_failure_not_zero(mode, match, sources):
    with BmcSimulator(WATTS, mode) as sim:
        sim.failure = "missing"
        source = make(sources, sim.base_url + RESOURCE_PATHS[mode])
        with pytest.raises(SourceUnavailable, match=match):
            source.open()


def test_discovery_failure_lists_what_was_tried(sources):
    with BmcSimulator(WATTS, "powersubsystem") as sim:
        source = make(sources, sim.url)
        source._get = _failing_metrics(source._get)  # PSU metrics unreadable, the rest fine
        with pytest.raises(SourceUnavailable, match=r"no chassis gave a node power reading; tried: "
                                                    r"http://127\.0\.0\.1:\d+/redfish/v1/Chassis/"
                                                    r"Enclosure0: no power resource; .*HTTP 404"):
            source.open()


def _failing_metrics(get):

    def wrapped(url):
        if url.endswith("/Metrics"):
            raise HttpFailure(f"HTTP 404 Not Found from {redact_url(url)}", 404)
        return get(url)
    return wrapped


def test_not_a_power_resource(sources):
    with BmcSimulator(WATTS, "ilo") as sim:
        source = make(sources, sim.base_url + "/redfish/v1/Chassis/1/Thermal")
        with pytest.raises(SourceUnavailable, match="is a Thermal resource; ENERGY_REDFISH_URL "
                                                    "must name the service root"):
            source.open()
        source = make(sources, sim.base_url + "/redfish/v1/Systems/1")
        with pytest.raises(SourceUnavailable, match="HTTP 404 Not Found from"):
            source.open()


def test_failures_mid_run_are_bridged_and_never_escape(sources, caplog, thread_errors):
    caplog.set_level(logging.DEBUG)
    with BmcSimulator(WATTS, "ilo", hang_s=1.0) as sim:
        source = make(sources, sim.url, timeout_s=0.2, max_backoff_s=0.1)
        source.open()
        time.sleep(0.4)
        joules_before = source.read()["node"]
        t_fail = time.monotonic()
        for failure, seconds in (("500", 0.25), ("garbage", 0.25), ("missing", 0.2),
                                 ("timeout", 0.5)):
            sim.failure = failure
            time.sleep(seconds)
            assert source.read()["node"] >= joules_before  # read() keeps answering
        joules_hole_end = source.read()["node"]
        sim.failure = None
        t_recover = time.monotonic()
        time.sleep(0.6)
        joules_final = source.read()["node"]
        t_final = time.monotonic()
        t0 = time.monotonic()
        source.close()
        assert time.monotonic() - t0 < source.timeout_s + 1.0
    hole = t_recover - t_fail
    # During the hole at most one sample in flight at the switch adds a trapezoid: a hole is
    # bridged only once a good sample closes it.
    assert joules_hole_end - joules_before <= WATTS * MAX_GAP
    # Then it is bridged (the BMC drew a constant WATTS all along), and its length reported.
    assert source.bridged_s() >= hole - MAX_GAP
    # It recovers: after the last backoff (<= 0.1 s) and a hanging request (<= 0.2 s).
    grown = joules_final - joules_hole_end
    assert WATTS * (t_final - t_fail - 0.4) <= grown <= WATTS * (t_final - t_fail + MAX_GAP)
    assert source.coverage() < 0.8  # time: the hole was not measured
    assert "HTTP 500" in source.health.first_error
    logged = [r for r in caplog.records if "energy source redfish failed" in r.getMessage()]
    assert len(logged) == 1  # logged once, counted always
    assert thread_errors == []


def test_backoff_spaces_out_requests_to_a_failing_bmc(sources):
    with BmcSimulator(WATTS, "ilo") as sim:
        source = make(sources, sim.url, max_backoff_s=0.16)
        source.open()
        sim.failure = "500"
        n0 = len(sim.requests)
        time.sleep(1.0)
        n_failing = len(sim.requests) - n0
        sim.failure = None
        t_back = time.monotonic()
        while source.sampler.last_sample_time() < t_back and time.monotonic() < t_back + 2.0:
            time.sleep(0.01)
        back_after = time.monotonic() - t_back
        source.close()
    # Without backoff ~45 requests in 1 s at 0.02 s; with it (0.02, 0.04, 0.08, then every
    # 0.16 s) about 9; each try that failed is one failure, no more.
    assert 3 <= n_failing <= 15
    assert n_failing - 2 <= source.health.failures <= n_failing + 2
    # the BMC answers again: read within one back-off (0.16 s), however long it failed
    assert back_after < 0.16 + 0.2


def test_bmc_simulator_command_line(sources):
    proc = subprocess.Popen([sys.executable, str(FAKES / "bmc_sim.py"), "--port", "0",
                             "--watts", "450", "--fail-after", "9", "--mode", "envmetrics"],
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_for_output(proc)
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/redfish/v1")
        source = make(sources, url, sample_period_s=0.05, max_backoff_s=0.05)
        source.open()  # discovery reads the power figures (the chosen one, the cross-check)
        assert source.resource.kind == "EnvironmentMetrics"
        time.sleep(0.5)
        source.close()
        # 9 good power reads (3 at open: the figures the cross-check compares; then 6
        # sampled), then only HTTP 500s.
        sampler = source.sampler
        span = sampler.last_sample_time() - sampler.first_sample_time()
        # counted, not timed: a loaded machine stretches the span, not the number of reads
        assert source.health.attempts - source.health.failures == 6 and span > 0
        assert source.read()["node"] == pytest.approx(450.0 * span, rel=1e-9)
        assert "HTTP 500" in source.health.first_error
    finally:
        stop(proc)


# -- configuration and small pieces -----------------------------------------------------------------
def test_from_env_needs_the_url():
    with pytest.raises(SourceUnavailable, match="ENERGY_REDFISH_URL is not set"):
        RedfishSource.from_env({}, {})


@pytest.mark.parametrize("url, match", [
    ("ftp://bmc.example/redfish/v1", "must be an http:// or https:// URL"),
    ("bmc.example/redfish/v1", "must be an http:// or https:// URL"),
    ("https://bmc.example:99999/redfish/v1", "is not a valid URL"),
])
def test_bad_url_is_named(url, match):
    with pytest.raises(SourceUnavailable, match=f"ENERGY_REDFISH_URL=.*{match}"):
        RedfishSource.from_env({"ENERGY_REDFISH_URL": url}, {})


def test_bad_flag_is_named():
    env = {"ENERGY_REDFISH_URL": "https://bmc.example", "ENERGY_REDFISH_INSECURE": "maybe"}
    with pytest.raises(SourceUnavailable, match="ENERGY_REDFISH_INSECURE='maybe' is not a boolean"):
        RedfishSource.from_env(env, {})


@pytest.mark.parametrize("options, match", [
    ({"sample_period_s": -1}, "sample_period_s=-1 must be a positive number"),
    ({"redfish_sample_period_s": "5"}, "redfish_sample_period_s='5' must be a positive number"),
    ({"redfish_timeout_s": 0}, "redfish_timeout_s=0 must be a positive number"),
])
def test_bad_option_is_named(options, match):
    with pytest.raises(ValueError, match=match):
        RedfishSource.from_env({"ENERGY_REDFISH_URL": "https://bmc.example"}, options)


def test_options_pick_redfish_specific_period_first():
    env = {"ENERGY_REDFISH_URL": "https://bmc.example"}
    assert RedfishSource.from_env(env, {}).sample_period_s == 5.0
    assert RedfishSource.from_env(env, {"sample_period_s": 2}).sample_period_s == 2.0
    both = RedfishSource.from_env(env, {"sample_period_s": 0.1, "redfish_sample_period_s": 4})
    assert both.sample_period_s == 4.0 and both.timeout_s == 3.0
    assert both.scope == "node" and both.name == "redfish"


def test_read_before_open_and_double_close(sources):
    source = make(sources, "https://bmc.example")
    assert source.read() == {"node": 0.0}
    assert "not opened" in source.describe()
    source.close()
    source.close()


def test_redact_url():
    assert redact_url("https://u:p@bmc.example:8443/redfish/v1?x=secret") == \
        "https://***@bmc.example:8443/redfish/v1"
    assert redact_url("http://[::1]:80/redfish/v1") == "http://[::1]:80/redfish/v1"
    assert redact_url("http://bmc/") == "http://bmc/"


@pytest.mark.parametrize("doc, match", [
    ({"PowerWatts": {"Reading": True}}, "is true, not a number"),
    ({"PowerWatts": {"Reading": "512"}}, 'is "512", not a number'),
    ({"PowerWatts": {"Reading": -3}}, "is -3, not a power in watts"),
    ({"PowerWatts": {"Reading": float("nan")}}, "is nan, not a power in watts"),
    ({"PowerWatts": []}, "PowerWatts.Reading missing"),
    ([], "PowerWatts missing"),
])
def test_reading_at_rejects_non_readings(doc, match):
    with pytest.raises(BadReading, match=match):
        reading_at(doc, ("PowerWatts", "Reading"), "the test document")


def test_reading_at_indexes_lists():
    doc = {"PowerControl": [{"PowerConsumedWatts": 412}]}
    assert reading_at(doc, ("PowerControl", 0, "PowerConsumedWatts"), "x") == 412.0
    with pytest.raises(BadReading, match=r"PowerControl\[1\] missing in x"):
        reading_at(doc, ("PowerControl", 1, "PowerConsumedWatts"), "x")


def test_basic_credentials_header():
    creds = BasicCredentials("a", "b:c")
    assert creds.header() == "Basic " + base64.b64encode(b"a:b:c").decode()
    assert "b:c" not in repr(creds)


@pytest.mark.parametrize("mode", ["ilo", "powersubsystem"])
def test_trickling_bmc_delays_the_start_by_at_most_its_timeout(sources, mode):
    """Issue 13.2: a BMC sending one byte every 0.5 s never tripped the per-read socket
    timeout and held the trial start (0 batches in 90 s with redfish_timeout_s=1). Now the
    whole open() (discovery: several requests; first sample) is bounded by the timeout."""
    from shared.energy.meter import EnergyMeter

    with BmcSimulator(WATTS, mode, trickle_s=0.5) as sim:
        sim.failure = "trickle"
        source = make(sources, sim.url, timeout_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailable, match=r"no answer from .* within 1 s "
                                                    r"\(timeout\); the limit is for the whole"):
            source.open()
        assert time.monotonic() - t0 < 1.6
        meter = EnergyMeter([make(sources, sim.url, timeout_s=1.0)], explicit=True)
        t0 = time.monotonic()
        meter.start()
        assert time.monotonic() - t0 < 1.6  # the first batch waits at most the timeout
        meter.close()


def test_trickling_bmc_while_sampling_fails_the_sample_within_the_timeout(sources):
    with BmcSimulator(WATTS, "powersubsystem", trickle_s=0.3) as sim:
        source = make(sources, sim.url, timeout_s=0.5, sample_period_s=0.1)
        t0 = time.monotonic()
        source.open()
        assert time.monotonic() - t0 < 1.0
        sim.failure = "trickle"
        deadline = time.monotonic() + 5.0
        while source.health.failures < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert source.health.failures >= 1
        assert "within 0.5 s (timeout)" in (source.health.first_error or "")
        t0 = time.monotonic()
        source.close()
        assert time.monotonic() - t0 < 1.6


def test_bmc_that_comes_up_late_is_retried_and_measured_from_then_on(sources, caplog):
    """Issue 13.4: a configured BMC that refused the connection at start was dropped for the
    whole run with one INFO line. Now: a WARNING saying what to do, retries at report time
    (30 s, doubling), and once it is up it is measured; coverage counts the time before."""
    import socket as _socket

    from shared.energy import meter as meter_mod
    from shared.energy.meter import EnergyMeter

    with _socket.socket() as probe:  # a free port, nothing listening on it yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock_t = [1000.0]
    source = make(sources, f"http://127.0.0.1:{port}/redfish/v1", timeout_s=1.0)
    meter = EnergyMeter([source], clock=lambda: clock_t[0], explicit=True)
    with caplog.at_level(logging.INFO, logger="shared.energy"):
        meter.start()
        [warning] = [r for r in caplog.records if r.levelno == logging.WARNING
                     and "unavailable" in r.getMessage()]
        assert "it is retried at report time (first in 30 s, then doubling to every 600 s)" \
            in warning.getMessage()
        assert "its energy is missing (not zero)" in warning.getMessage()
        assert meter.active_sources == [] and meter.pending_sources == [source]
        clock_t[0] += 31.0  # first retry: still refused, next in 60 s
        assert "node" not in meter.read().joules
        assert any("still unavailable after 2 tries" in r.getMessage() and "next try in 60 s"
                   in r.getMessage() for r in caplog.records)
        with BmcSimulator(WATTS, "ilo", port=port):  # the BMC comes up now
            clock_t[0] += 30.0  # 30 s of the 60: not yet
            meter.read()
            assert meter.pending_sources == [source]
            clock_t[0] += 31.0
            snap = meter.read()
            assert meter.active_sources == [source] and meter.pending_sources == []
            assert any("is up now" in r.getMessage() and "92 s after the start" in
                       r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
            time.sleep(0.3)
            clock_t[0] += 92.0  # as long again as it was missing
            snap = meter.read()
            assert snap.joules["node"] > 0
            assert snap.coverage["redfish"] == pytest.approx(0.5, abs=0.05)
            meter.close()
    assert meter_mod.RETRY_FIRST_S == 30.0 and meter_mod.RETRY_MAX_S == 600.0


# -- vendor-shaped trees (tests/fixtures/redfish), served by the simulator ---------------------------
def _window(sim: BmcSimulator, source: RedfishSource, seconds: float, change_to: float = None
            ) -> Tuple[float, float, float]:
    """Open, wait (changing the power halfway when asked), read: (joules, least and most
    true energy of the window: the truth just after open to just before the read, and
    just before open to just after the read)."""
    e_before_open = sim.energy_j()
    source.open()
    e_opened = sim.energy_j()
    time.sleep(seconds / 2)
    if change_to is not None:
        sim.watts = change_to
    time.sleep(seconds / 2)
    e_before_read = sim.energy_j()
    joules = source.read()["node"]
    e_read = sim.energy_j()
    return joules, e_before_read - e_opened, e_read - e_before_open


def _warnings(caplog, text: str) -> List[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


# Where the vendor fixtures (tests/fixtures/redfish) were checked against public sources:
# - openbmc.json: bmcweb names a sensor resource <type>_<D-Bus leaf>, and the node's power is
#   /redfish/v1/Chassis/<id>/Sensors/power_total_power (D-Bus /xyz/openbmc_project/sensors/
#   power/total_power): openbmc/openbmc-test-automation reads that path and compares it with
#   the DCMI power reading; some bmcweb forks also link it from EnvironmentMetrics.PowerWatts
#   (DataSourceUri), upstream openbmc/bmcweb (redfish-core/lib/environment_metrics.hpp) does not.
# - cray_ex_blade.json: HPE's CSM documentation (https://cray-hpe.github.io/docs-csm/,
#   operations/power_management) describes node energy counters (/sys/cray/pm_counters in band,
#   the node controller's Redfish out of band) but names no Redfish sensor paths; the
#   Chassis/NodeN/Sensors/NodeEnergy layout is not confirmed by a public vendor document.
NODE1_UUID = "4c4c4544-0030-3010-8031-b2c04f564e31"  # the fixture's Systems/Node1


@pytest.mark.parametrize("chassis, identity, node, share", [
    ("Node1", None, "Node1", 0.75),
    ("/redfish/v1/Chassis/Node1", None, "Node1", 0.75),
    # unset: this node's chassis from facts on the node
    (None, NodeIdentity(system_uuid=NODE1_UUID), "Node1", 0.75),
    (None, NodeIdentity(hostnames=("nid000001.example.net",)), "Node0", 1.0),
    (None, NodeIdentity(xname="x1000c0s0b0n1"), "Node1", 0.75),
])
def test_cray_ex_blade_reads_the_node_energy_counter(chassis, identity, node, share, sources,
                                                     caplog):
    caplog.set_level(logging.INFO)
    with BmcSimulator(400.0, fixture="cray_ex_blade") as sim:
        source = make(sources, sim.url, chassis=chassis, identity=identity)
        joules, least, most = _window(sim, source, 0.6, change_to=900.0)
    # The counter is read at report time: no thread, no lag; whole joules at both ends.
    assert source.sampler is None
    assert share * least - 2 <= joules <= share * most + 2
    # One sensor of the node, never the sum of the dozens of sensors it contains
    assert source.resource.url.endswith(f"/Chassis/{node}/Sensors/NodeEnergy")
    assert f"redfish:Chassis/{node}/Sensors/NodeEnergy:energy-counter" in source.describe()
    # the report's sources say which resource measured; a counter read at report time lags 0
    assert source.label == f"redfish:Chassis/{node}/Sensors/NodeEnergy:energy-counter"
    assert source.lag_s == 0.0
    chosen = [r.getMessage() for r in caplog.records if "node energy from" in r.getMessage()]
    assert len(chosen) == 1 and "energy counter in joules" in chosen[0]
    assert not _warnings(caplog, "chassis")
    if chassis is None:
        [how] = [r.getMessage() for r in caplog.records if "this node is chassis" in r.getMessage()]
        assert f"this node is chassis {node} " in how


def test_cray_ex_blade_with_no_matching_fact_is_refused_naming_both(sources):
    with BmcSimulator(400.0, fixture="cray_ex_blade") as sim:
        source = make(sources, sim.url, identity=NodeIdentity(hostnames=("login1",)))
        with pytest.raises(SourceUnavailable) as err:
            source.open()
    text = str(err.value)
    assert "this BMC serves 2 node chassis (Node0 (Chassis/Node0), Node1 (Chassis/Node1))" in text
    assert "none could be matched to this node" in text and "host name 'login1'" in text
    assert "set ENERGY_REDFISH_CHASSIS to the id of this node's chassis" in text
    assert "Enclosure" not in text  # it holds both nodes: never a candidate


def test_a_one_node_blade_needs_no_identity_and_does_not_warn(sources, caplog):
    caplog.set_level(logging.INFO)
    with BmcSimulator(400.0, fixture="cray_ex_blade") as sim:
        for path in [p for p in sim.tree if "/Node1" in p]:
            del sim.tree[path]
        for coll in ("/redfish/v1/Chassis", "/redfish/v1/Systems"):
            sim.tree[coll]["Members"] = [m for m in sim.tree[coll]["Members"]
                                         if "Node1" not in m["@odata.id"]]
        enclosure = sim.tree["/redfish/v1/Chassis/Enclosure"]
        enclosure["Links"]["Contains"] = enclosure["Links"]["Contains"][:1]
        source = make(sources, sim.url, identity=NodeIdentity(hostnames=("login1",)))
        source.open()
    assert source.resource.url.endswith("/Chassis/Node0/Sensors/NodeEnergy")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and "plain http" not in r.getMessage() and "sampling every" not in r.getMessage()]


def test_energy_counter_reset_loses_that_interval_only(sources, caplog):
    with BmcSimulator(500.0, fixture="cray_ex_blade") as sim:
        source = make(sources, sim.url, chassis="Node0")
        source.open()
        time.sleep(0.2)
        first = source.read()["node"]
        sim.reset_counters()  # a BMC reboot: the counter starts again from 0
        time.sleep(0.2)
        e_before = sim.energy_j()
        assert source.read()["node"] == first  # the reset interval is not counted ...
        e0 = sim.energy_j()
        time.sleep(0.3)
        e1 = sim.energy_j()
        after = source.read()["node"]
        e2 = sim.energy_j()
    # ... and counting goes on from the new value
    assert (e1 - e0) - 2 <= after - first <= (e2 - e_before) + 2
    assert source.health.failures == 1
    assert "went back" in source.health.first_error
    assert len(_warnings(caplog, "went back")) == 1


def test_two_power_supplies_are_summed_not_one_sensor_taken(sources, caplog):
    caplog.set_level(logging.INFO)
    with BmcSimulator(WATTS, fixture="psu_pair") as sim:
        source = make(sources, sim.url)
        source.open()
        assert source.resource.kind == "PowerSubsystem" and len(source.resource.read_urls) == 2
        # 0.47 + 0.53 of the node: a reader that took one supply's sensor would read half
        assert source._read_resource(source.resource) == pytest.approx(WATTS)
        joules, least, most = _window(sim, make(sources, sim.url), 0.6, change_to=800.0)
    # power integrated from samples: at most a period and a request behind the truth
    assert least - 800.0 * (2 * PERIOD + 0.05) <= joules <= most


def test_kwh_counter_is_too_coarse_when_power_is_there(sources, caplog):
    caplog.set_level(logging.INFO)
    with BmcSimulator(WATTS, fixture="kwh_counter") as sim:
        source = make(sources, sim.url)
        source.open()
        assert source.resource.url.endswith("/Chassis/1U/Sensors/TotalPower")
        assert source.resource.counter_j is None and source.sampler is not None
        assert source._read_resource(source.resource) == pytest.approx(WATTS)  # the total, not the CPU sensor
    assert "too coarse" in source.describe() and "EnergykWh" in source.describe()


def test_kwh_counter_alone_is_read_as_a_counter(sources, caplog):
    with BmcSimulator(2.0e6, fixture="kwh_counter") as sim:
        # A BMC with the kWh counter only: no power sensor, no PowerWatts.
        sensors = "/redfish/v1/Chassis/1U/Sensors"
        for name in ("TotalPower", "CPU1Power"):
            del sim.tree[f"{sensors}/{name}"]
        sim.tree[sensors]["Members"] = [{"@odata.id": f"{sensors}/TotalEnergy"}]
        del sim.tree["/redfish/v1/Chassis/1U/EnvironmentMetrics"]["PowerWatts"]
        # (megawatts: so that the coarse counter ticks within the test; above the node ceiling)
        source = make(sources, sim.url, max_power_w=1e8)
        joules, least, most = _window(sim, source, 0.6, change_to=4.0e6)
    assert source.resource.counter_j == 3.6e6 and source.sampler is None
    assert "coarse" in source.describe()
    # 0.001 kWh steps: each end of the window is known to 3600 J
    assert least - 3600 <= joules <= most + 3600


def test_openbmc_power_sensor_when_power_control_has_no_reading(sources):
    with BmcSimulator(WATTS, fixture="openbmc") as sim:
        source = make(sources, sim.url)
        joules, least, most = _window(sim, source, 0.6, change_to=200.0)
        assert source.resource.url.endswith("/Sensors/power_total_power")
        assert source.label == "redfish:Chassis/chassis/Sensors/power_total_power:power-sensor"
        assert 0.0 <= source.lag_s <= 5 * PERIOD  # sampled: the integral ends at the last sample
        # the node's sensor, not the supplies' (0.5 each) nor their sum with the CPU's
        assert source._read_resource(source.resource) == pytest.approx(200.0)
        legacy = make(sources, sim.base_url + "/redfish/v1/Chassis/chassis/Power")
        with pytest.raises(SourceUnavailable, match=r"PowerControl\[0\]\.PowerConsumedWatts "
                                                    "missing"):
            legacy.open()
    # power integrated from samples: at most a period and a request behind the truth
    assert least - 900.0 * (2 * PERIOD + 0.05) <= joules <= most


@pytest.mark.parametrize("chassis, share", [("Sled2", 0.31), ("Chassis/Sled3", 0.27)])
def test_enclosure_chassis_selected_by_env(chassis, share, sources, caplog):
    caplog.set_level(logging.INFO)
    with BmcSimulator(WATTS, fixture="multi_sled_enclosure") as sim:
        env = {"ENERGY_REDFISH_URL": sim.url, "ENERGY_REDFISH_CHASSIS": chassis}
        source = RedfishSource.from_env(env, {"redfish_sample_period_s": PERIOD})
        sources.append(source)
        source.open()
        assert source._read_resource(source.resource) == pytest.approx(WATTS * share)
    assert f"Chassis/{chassis.split('/')[-1]}/EnvironmentMetrics" in source.describe()
    assert not _warnings(caplog, "could be this node")


def test_enclosure_without_selection_is_refused_naming_the_sleds(sources):
    """No ComputerSystem to tell the sleds apart: never the first sled (a neighbour's figure
    on three nodes of four), never the shelf's supply that feeds all four."""
    with BmcSimulator(WATTS, fixture="multi_sled_enclosure") as sim:
        source = make(sources, sim.url, identity=NodeIdentity(hostnames=("sled-host",)))
        with pytest.raises(SourceUnavailable) as err:
            source.open()
    text = str(err.value)
    assert all(sled in text for sled in ("Sled1", "Sled2", "Sled3", "Sled4"))
    assert "Enclosure" not in text.split("(", 1)[1].split(")")[0]  # not a candidate
    assert "ENERGY_REDFISH_CHASSIS" in text


def test_several_power_control_entries_one_is_used(sources, caplog):
    with BmcSimulator(WATTS, fixture="multi_sled_enclosure") as sim:
        source = make(sources, sim.url, chassis="Sled4")
        source.open()
        assert source.resource.path == ("PowerControl", 0, "PowerConsumedWatts")
        assert source._read_resource(source.resource) == pytest.approx(WATTS * 0.2)  # not 0.2 + 0.08
    warned = _warnings(caplog, "PowerControl entries")
    assert len(warned) == 1 and "Sled Power Control" in warned[0] and "[0] only" in warned[0]
    assert "never their sum" in source.describe()


def test_unknown_chassis_selection_lists_the_chassis(sources):
    with BmcSimulator(WATTS, fixture="multi_sled_enclosure") as sim:
        source = make(sources, sim.url, chassis="Sled9")
        with pytest.raises(SourceUnavailable, match=r"ENERGY_REDFISH_CHASSIS=Sled9 names none of "
                                                    r"the chassis .*Sled1 .*Sled4"):
            source.open()


def test_ambiguous_node_sensors_are_never_summed(sources):
    with BmcSimulator(WATTS, fixture="openbmc") as sim:
        # two sensors that could each be the node's total: none is taken, nor their sum
        sensors = "/redfish/v1/Chassis/chassis/Sensors"
        sim.tree[f"{sensors}/power_ps0_input_power"]["Name"] = "Total Power"
        source = make(sources, sim.url)
        with pytest.raises(SourceUnavailable, match="2 Power sensors could be the node's"):
            source.open()


@pytest.mark.parametrize("expand", [True, False])
def test_sensors_read_in_one_request_where_the_bmc_expands(expand, sources):
    with BmcSimulator(WATTS, fixture="cray_ex_blade") as sim:
        sim.expand = expand  # False: the BMC ignores $expand, each sensor is fetched
        source = make(sources, sim.url, chassis="Node1")
        source.open()
        sensor_gets = [path for path, _, _ in sim.requests if "/Node1/Sensors/" in path]
    assert source.resource.url.endswith("/Chassis/Node1/Sensors/NodeEnergy")
    # 27 sensors in the node: one request for all of them, or one each
    assert len(sensor_gets) == (0 if expand else 27)


def test_counter_is_read_at_close_and_then_frozen(sources):
    with BmcSimulator(WATTS, fixture="cray_ex_blade") as sim:
        source = make(sources, sim.url, chassis="Node0")
        e_before_open = sim.energy_j()
        source.open()
        e_opened = sim.energy_j()
        time.sleep(0.3)
        e_before_close = sim.energy_j()
        source.close()
        e_closed = sim.energy_j()
        time.sleep(0.1)
        frozen = source.read()["node"]  # the window ended at close: no more requests
        requests = len(sim.requests)
        assert source.read()["node"] == frozen and len(sim.requests) == requests
    assert (e_before_close - e_opened) - 2 <= frozen <= (e_closed - e_before_open) + 2


def test_bmc_simulator_command_line_serves_a_fixture(sources):
    proc = subprocess.Popen([sys.executable, str(FAKES / "bmc_sim.py"), "--port", "0",
                             "--watts", "450", "--fixture", "openbmc"],
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_for_output(proc)
        source = make(sources, proc.stdout.readline().strip())
        source.open()
        assert source.resource.url.endswith("/Sensors/power_total_power")
        assert source.label == "redfish:Chassis/chassis/Sensors/power_total_power:power-sensor"
        assert 0.0 <= source.lag_s <= 5 * PERIOD  # sampled: the integral ends at the last sample
        assert source._read_resource(source.resource) == pytest.approx(450.0)
    finally:
        stop(proc)


def test_report_sources_show_the_chosen_resource_and_keys_stay_the_name(sources):
    """Issue 12: the chosen resource appears in ``sources``; the meter's own maps stay keyed
    by the name, so nothing that looks a source up by name loses it."""
    with BmcSimulator(400.0, fixture="cray_ex_blade") as sim:
        source = make(sources, sim.url, chassis="Node1")
        assert source.label == "redfish"  # not open: nothing chosen yet
        with EnergyMeter([source]) as meter:  # started on entry, closed on exit
            time.sleep(0.2)
            snap = meter.read()
    label = "redfish:Chassis/Node1/Sensors/NodeEnergy:energy-counter"
    assert snap.sources == [label]
    assert set(snap.per_source) == set(snap.coverage) == set(snap.lag_s) == {"redfish"}
    report = RankEnergy.from_snapshot(snap, node_id="n", rank=0, local_rank=0,
                                      slots_on_node_for_trial=1, gpus_on_node=0)
    metrics = combine([report.to_dict()]).to_metrics()
    assert metrics["sources"] == label and metrics["lag_s"] == 0.0
    # a crashed run's last report carries the label through from_metrics unchanged
    assert TrialEnergy.from_metrics(metrics).sources == [label]


def test_node_identity_is_read_from_this_host(tmp_path):
    smbios, cray = tmp_path / "product_uuid", tmp_path / "xname"
    smbios.write_text("4C4C4544-0030-3010-8031-B2C04F564E31\n")
    cray.write_text("x1000c0s0b0n1\n")
    me = NodeIdentity.of_this_host({"ENERGY_NODE_NAME": "nid000002"}, smbios=smbios, cray=cray)
    assert me.system_uuid == NODE1_UUID and me.xname == "x1000c0s0b0n1"
    assert me.hostnames[0] == "nid000002" and me.matches_name("NID000002.cluster")
    unread = NodeIdentity.of_this_host({}, smbios=tmp_path / "absent", cray=tmp_path / "absent")
    assert unread.system_uuid is None and unread.xname is None
    assert "no SMBIOS UUID (unreadable" in unread.describe()


def test_figures_that_disagree_are_warned_with_every_value(sources, caplog):
    """DMTF's public-tower shape: the sensor EnvironmentMetrics names reads 374 W, PowerWatts
    974 W, the supplies 974 W, PowerControl 926 W. Three of the four agree: the first of those
    (PowerWatts) is taken, not the sensor, and one warning at open lists them all and says
    which was taken and why."""
    with BmcSimulator(WATTS, fixture="disagreeing_tower") as sim:
        source = make(sources, sim.url)
        with caplog.at_level(logging.WARNING, logger="shared.energy.sources.redfish"):
            source.open()
        assert source._read_resource(source.resource) == pytest.approx(974.0)
    assert source.resource.url.endswith("/EnvironmentMetrics")
    [warning] = _warnings(caplog, "differ by more than 10%")
    for value in ("374.0 W", "974.0 W", "926.0 W"):
        assert value in warning
    taken = warning.split("Taken: ")[1]
    assert taken.startswith("redfish:Chassis/Tower/EnvironmentMetrics") and \
        "on which 3 of the 4 figures agree, rather than" in taken and "TotalPower" in taken


def test_figures_that_agree_are_not_warned(sources, caplog):
    with BmcSimulator(WATTS, "envmetrics") as sim:  # PowerWatts, PSU sum, PowerControl agree
        source = make(sources, sim.url)
        with caplog.at_level(logging.WARNING, logger="shared.energy.sources.redfish"):
            source.open()
    assert not _warnings(caplog, "differ by more than")
