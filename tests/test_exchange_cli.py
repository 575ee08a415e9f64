"""market/exchange/cli.py: every bad argument is one plain line and exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from market.exchange import ExchangeConfig
from market.exchange.cli import UsageError, parse_args

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)

FLAGS = ["--host", "--port", "--symbols", "--interval", "--speed", "--replay", "--seed", "--history-minutes",
         "--history-days", "--futures-weight-limit", "--spot-weight-limit", "--weight-window", "--ban-seconds"]
SWITCHES = ["--no-loop", "--enforce-weights"]


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "market.exchange", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args", [
    ["--port", "99999"], ["--port", "abc"], ["--replay", "missing.ws"], ["--speed", "-1"], ["--symbols", ",,"],
    ["--speed", "nan"], ["--interval", "7m"], ["--symbols", "0"], ["--symbols", "btc-usdt!"],
    ["--history-days", "-1"], ["--weight-window", "3w"], ["--futures-weight-limit", "0"], ["--bogus"],
    ["--replay", str(ROOT / "tests")], ["--port"],
])
def test_bad_arguments_one_plain_line_exit_2(args: list[str]) -> None:
    r = run(*args)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m market.exchange: error: ") and "Traceback" not in r.stderr


def test_a_port_in_use_is_one_plain_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run("--port", str(busy.getsockname()[1]), "--symbols", "BTCUSDT")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "cannot listen on 127.0.0.1:" in r.stderr and "in use" in r.stderr


def test_an_unreadable_recording_is_a_usage_error(tmp_path: Path) -> None:
    # empty, binary, a text file that is no recording, a header without frames
    for content in (b"", b"\xff\xfe\x00binary", b"myhost\n", b"wss://x/stream <-> 1626992740.1\n"):
        bad = tmp_path / "bad.ws"
        bad.write_bytes(content)
        with pytest.raises(UsageError, match="--replay"):
            parse_args(["--replay", str(bad)])


def test_good_arguments_make_the_config() -> None:
    cfg = parse_args(["--port", "0", "--symbols", "btcusdt, ethusdt", "--speed", "inf", "--history-days", "400",
                      "--enforce-weights", "--futures-weight-limit", "100", "--weight-window", "10s",
                      "--ban-seconds", "5"])
    assert cfg.symbols == ("BTCUSDT", "ETHUSDT") and cfg.max_speed and cfg.history_minutes == 400 * 1440
    assert cfg.enforce_weights and cfg.futures_weight_limit == 100 and cfg.weight_window == "10s"
    assert cfg.ban_seconds == 5 and cfg.spot_weight_limit == 6000
    assert len(parse_args(["--symbols", "7"]).symbols) == 7


values = st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(str),
                   st.sampled_from(["0", "1", "65535", "65536", "1m", "10s", "0s", ",", "BTCUSDT", "inf", "-0"]))
argv = st.lists(st.one_of(st.sampled_from(SWITCHES), st.tuples(st.sampled_from(FLAGS), values).map(list),
                          st.sampled_from(FLAGS).map(lambda f: [f]), values.map(lambda v: [v])),
                max_size=6).map(lambda parts: [x for p in parts for x in ([p] if isinstance(p, str) else p)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv)
@example(["\n"])
@example(["--symbols", "A\nB"])
def test_any_command_line_parses_or_is_one_usage_line(args: list[str]) -> None:
    if any(a.startswith("-h") or a.startswith("--h") and "--help".startswith(a) for a in args):
        return  # --help prints the help and exits 0: not a parse result
    try:
        cfg = parse_args(args)
    except UsageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(cfg, ExchangeConfig)
    assert 0 <= cfg.port <= 65535 and cfg.speed >= 0 and cfg.symbols and cfg.history_minutes >= 0


@settings(max_examples=100, deadline=None)
@given(port=st.integers(0, 65535), speed=st.floats(0, 1e6), days=st.floats(0, 3650), window=st.sampled_from(["1m", "10s", "2h", "1d"]))
def test_valid_values_round_trip(port: int, speed: float, days: float, window: str) -> None:
    cfg = parse_args(["--port", str(port), "--speed", repr(speed), "--history-days", repr(days), "--weight-window", window])
    assert (cfg.port, cfg.speed, cfg.weight_window) == (port, speed, window)
    assert cfg.history_minutes == round(days * 1440)
