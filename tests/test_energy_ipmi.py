"""IPMI DCMI source against a fake `ipmitool` on PATH (tests/fakes/ipmitool) that prints
what ipmitool 1.8.19 prints, and can fail, print garbage or hang."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from shared.energy.sources.base import SourceUnavailable
from shared.energy.sources.ipmi import IpmiSource, parse_dcmi_power, redact_command

FAKES = Path(__file__).resolve().parent / "fakes"

# Verbatim layout of ipmitool 1.8.19 (lib/ipmi_dcmi.c, ipmi_dcmi_pwr_rd), and of later
# versions whose timestamp line lacks its newline.
REAL_OUTPUT = """
    Instantaneous power reading:                   412 Watts
    Minimum during sampling period:                 32 Watts
    Maximum during sampling period:                752 Watts
    Average power reading over sample period:      226 Watts
    IPMI timestamp:                           Thu Jan  1 00:08:09 1970
    Sampling period:                          00000001 Seconds.
    Power reading state is:                   activated

"""
GLUED_OUTPUT = """
    Instantaneous power reading:                   195 Watts
    Minimum during sampling period:                188 Watts
    Maximum during sampling period:               1940 Watts
    Average power reading over sample period:      194 Watts
    IPMI timestamp:                           08/28/26 07:12:06 UTC    Sampling period:                          00000005 Seconds.
    Power reading state is:                   deactivated
"""


@pytest.fixture()
def ipmitool(tmp_path, monkeypatch):
    """The fake ipmitool first on PATH, driven through files in a temp directory."""
    state = tmp_path / "ipmi"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_IPMITOOL_DIR", str(state))

    class Ctl:
        dir = state

        def set(self, *, watts: int | None = None, mode: str | None = None) -> None:
            if watts is not None:
                (state / "watts").write_text(f"{watts}\n")
            if mode is not None:
                (state / "mode").write_text(f"{mode}\n")

        def calls(self) -> list[str]:
            f = state / "calls"
            return f.read_text().splitlines() if f.exists() else []

    return Ctl()


def wait_attempts(src: IpmiSource, n: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while src.health.attempts < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert src.health.attempts >= n


def test_parse_real_output():
    assert parse_dcmi_power(REAL_OUTPUT) == (412.0, "activated")
    assert parse_dcmi_power(GLUED_OUTPUT) == (195.0, "deactivated")
    assert parse_dcmi_power("Instantaneous power reading : 214      Watts") == (214.0, None)
    with pytest.raises(ValueError, match=r"no 'Instantaneous power reading: N Watts' line "
                                         r"in the output \(got 'DCMI request failed"):
        parse_dcmi_power("DCMI request failed because: Invalid data field in request (cc)\n")


def test_redaction_hides_passwords_and_keys():
    argv = ["ipmitool", "-I", "lanplus", "-H", "bmc1", "-U", "admin", "-P", "hunter2",
            "-k", "kgkey", "-yDEADBEEF", "dcmi", "power", "reading"]
    shown = redact_command(argv)
    for secret in ("hunter2", "kgkey", "DEADBEEF"):
        assert secret not in shown
    assert shown.startswith("ipmitool -I lanplus -H bmc1 -U admin -P '******' -k '******' "
                            "'-y******' dcmi")
    assert redact_command(["ipmitool", "-Psecret"]) == "ipmitool '-P******'"


def test_samples_and_integrates_constant_power(ipmitool):
    ipmitool.set(watts=412)
    src = IpmiSource.from_env({}, {"sample_period_s": 0.05})
    src.open()
    assert src.describe() == "ipmi: `ipmitool dcmi power reading` sampled every 0.05 s"
    wait_attempts(src, 8)
    energy = src.read()["node"]
    sampler = src._sampler
    span = sampler.last_sample_time() - sampler.first_sample_time()
    assert energy == pytest.approx(412.0 * span, rel=1e-9)
    assert src.health.failures == 0
    src.close()
    assert ipmitool.calls()[0] == "dcmi power reading"


def test_lanplus_password_is_passed_but_never_logged(ipmitool, caplog):
    ipmitool.set(mode="fail")  # a failure makes the source log the command line
    cmd = "ipmitool -I lanplus -H 10.0.0.7 -U admin -P s3cr3t-pw dcmi power reading"
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SourceUnavailable) as info:
            IpmiSource.from_env({"ENERGY_IPMI_CMD": cmd}, {}).open()
    assert "s3cr3t-pw" not in str(info.value)
    assert "-P '******'" in str(info.value)
    assert ipmitool.calls() == ["-I lanplus -H 10.0.0.7 -U admin -P s3cr3t-pw dcmi power "
                                "reading"]
    ipmitool.set(mode="ok")
    with caplog.at_level(logging.DEBUG):
        src = IpmiSource.from_env({"ENERGY_IPMI_CMD": cmd}, {"sample_period_s": 0.05})
        src.open()
        ipmitool.set(mode="garbage")
        wait_attempts(src, 4)
        src.close()
    assert src.health.failures > 0
    assert "s3cr3t-pw" not in caplog.text
    assert "s3cr3t-pw" not in src.describe() and "s3cr3t-pw" not in src.health.first_error


def test_failures_mid_run_are_counted_and_gaps_bridged(ipmitool):
    ipmitool.set(watts=500)
    src = IpmiSource.from_env({}, {"sample_period_s": 0.03})
    src.open()
    wait_attempts(src, 5)
    ipmitool.set(mode="fail")
    fail_start = time.monotonic()
    before = src.read()["node"]
    while time.monotonic() - fail_start < 0.3:  # 10 periods of failures > max_gap (3)
        time.sleep(0.02)
    during = src.read()["node"]
    assert during == pytest.approx(before, abs=500 * 0.1)  # at most one bridged sample
    assert "exited with status 1" in src.health.first_error
    ipmitool.set(mode="garbage")
    time.sleep(0.1)
    ipmitool.set(mode="ok")
    recovered_from = time.monotonic()
    attempts = src.health.attempts
    wait_attempts(src, attempts + 6)
    after = src.read()["node"]
    src.close()
    # the hole (~0.4 s at 500 W = 200 J) is bridged at the BMC's constant 500 W, so the
    # energy since the failures began is 500 W over the span up to the last sample
    assert after - before >= 500 * (recovered_from - fail_start)
    assert after - before <= 500 * (time.monotonic() - fail_start + 0.1)
    assert src.bridged_s() > 0.3
    assert 0 < src.health.coverage < 1  # bridged time is not measured time


def test_hanging_bmc_times_out_and_close_is_prompt(ipmitool):
    src = IpmiSource.from_env({}, {"sample_period_s": 0.05, "ipmi_timeout_s": 0.3})
    src.open()
    ipmitool.set(mode="hang")  # the fake sleeps 30 s in a child process
    wait_attempts(src, src.health.attempts + 2)
    assert src.health.failures >= 1
    assert "took longer than 0.3 s" in src.health.first_error
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.5


def test_open_failures_say_why(ipmitool, caplog):
    with pytest.raises(SourceUnavailable, match=r"ipmi: command 'no-such-ipmitool' not found; "
                                                r"install ipmitool or set ENERGY_IPMI_CMD"):
        IpmiSource("no-such-ipmitool dcmi power reading").open()
    ipmitool.set(mode="fail")
    with pytest.raises(SourceUnavailable, match=r"exited with status 1: Could not open device "
                                                r"at /dev/ipmi0"):
        IpmiSource().open()
    ipmitool.set(mode="garbage")
    with pytest.raises(SourceUnavailable, match=r"no 'Instantaneous power reading"):
        IpmiSource().open()
    ipmitool.set(mode="zero")
    with pytest.raises(SourceUnavailable, match=r"the BMC reports 0 W \(power reading state: "
                                                r"deactivated\)"):
        IpmiSource().open()
    ipmitool.set(mode="deactivated", watts=380)
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        src = IpmiSource(period_s=10.0)
        src.open()
    assert any("deactivated" in r.getMessage() and "380 W" in r.getMessage()
               for r in caplog.records)
    src.close()


def test_bad_configuration_values():
    with pytest.raises(ValueError, match=r"ENERGY_IPMI_CMD is empty"):
        IpmiSource("   ")
    with pytest.raises(ValueError, match=r"ipmi: sample period must be a positive number of "
                                         r"seconds, got -5"):
        IpmiSource.from_env({}, {"sample_period_s": -5})
    with pytest.raises(ValueError, match=r"ipmi_timeout_s must be a positive number .*'x'"):
        IpmiSource.from_env({}, {"ipmi_timeout_s": "x"})
    src = IpmiSource.from_env({}, {"sample_period_s": 2.0, "ipmi_sample_period_s": 7.0})
    assert src.period_s == 7.0  # the per-source option wins over the shared one


SECRETS = ("hunter2pw", "kgkeysecret", "DEADBEEF99")


def _echoing_argv() -> str:
    return (f"{FAKES}/echo-wrapper ipmitool -I lanplus -H bmc1 -U admin -P {SECRETS[0]} "
            f"-k {SECRETS[1]} -y{SECRETS[2]} dcmi power reading")


def _assert_no_secret(texts) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret!r} leaked in: {text!r}"


def test_echoing_wrapper_never_leaks_the_password(ipmitool, caplog):
    """Issue 13.3: a wrapper that echoes its arguments put the -P password in the log
    through the failing command's stderr. Logs, exception texts and health must not show
    any secret, whatever form the echo gives it."""
    from shared.energy.meter import EnergyMeter

    texts = []
    ipmitool.set(mode="fail")
    with caplog.at_level(logging.DEBUG):
        src = IpmiSource(_echoing_argv(), period_s=0.05, timeout_s=5.0)
        with pytest.raises(SourceUnavailable) as info:
            src.open()
        texts.append(str(info.value))
        assert "echo-wrapper: running:" in str(info.value)  # the stderr is still shown
        meter = EnergyMeter([IpmiSource(_echoing_argv(), period_s=0.05)], explicit=True)
        meter.start()
        meter.close()
        # Opens, then fails while sampling: the failure's text goes to health and the log.
        ipmitool.set(mode="ok")
        src = IpmiSource(_echoing_argv(), period_s=0.05)
        src.open()
        ipmitool.set(mode="fail")
        wait_attempts(src, 4)
        src.close()
        assert src.health.failures >= 1
        texts.append(src.health.first_error or "")
        texts.append(src.describe())
    texts += [r.getMessage() for r in caplog.records]
    texts += [caplog.text]
    assert any("echo-wrapper: arg[" in t for t in texts)  # the echo was there to leak
    _assert_no_secret(texts)
    assert any("-U admin" in t for t in texts)  # a user name is not a secret


def test_redact_covers_every_form():
    from shared.energy.redact import redact

    text = redact("sudo ipmitool -P p4ss -Pjoined -k=kg1 url=https://u:pw123@bmc/x "
                  "Authorization: Bearer abc.def-ghi password=topsecret "
                  "Authorization: Basic dXNlcjpwYXNz")
    for secret in ("p4ss", "joined", "kg1", "u:pw123", "abc.def-ghi", "topsecret",
                   "dXNlcjpwYXNz"):
        assert secret not in text, text
    assert "https://***@bmc/x" in text


def test_slowly_printing_ipmitool_delays_the_start_by_at_most_its_timeout(ipmitool):
    """Issue 13.2 for subprocesses: an ipmitool (or a wrapper, a slow BMC link) that prints
    one byte every 0.5 s; the whole call is bounded by ipmi_timeout_s, and open() reads once
    (its reading is the first sample), so the start waits at most one timeout."""
    from shared.energy.meter import EnergyMeter

    ipmitool.set(mode="trickle")
    t0 = time.monotonic()
    meter = EnergyMeter([IpmiSource(DEFAULT_CMD_FOR_TEST, period_s=5.0, timeout_s=1.0)],
                        explicit=True)
    meter.start()
    assert time.monotonic() - t0 < 1.8
    assert meter.active_sources == []
    meter.close()
    ipmitool.set(mode="ok")
    src = IpmiSource(DEFAULT_CMD_FOR_TEST, period_s=5.0, timeout_s=1.0)
    src.open()
    assert len(ipmitool.calls()) == 2  # one call per open(), none extra for a first sample
    src.close()


DEFAULT_CMD_FOR_TEST = "ipmitool dcmi power reading"
