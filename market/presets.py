"""Where Binance lives: exchange presets, the default symbols, combined-stream URLs.

A ``Preset`` names a market's stream base, REST base, klines path and the limits
the exchange enforces there; ``--exchange`` picks one, ``--ws-url``/``--rest-url``
make a custom one. No network code and no parsing here (see market/binance.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from urllib.parse import urlsplit

from market.schema import interval_ms


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """Where one Binance market lives and the limits it enforces."""

    name: str
    ws_base: str  # stream base without "/stream"
    rest_base: str
    klines_path: str
    max_streams: int  # streams per connection
    kline_limit: int  # rows per REST klines request
    control_rate: float  # incoming control messages per second per connection
    spot: bool
    #: what the candles are, for the one-market-per-database rule (store/db.py);
    #: a known preset's own name unless given
    market: str = ""

    def __post_init__(self) -> None:
        if not self.market:
            object.__setattr__(self, "market", self.name)

    @property
    def klines_url(self) -> str:
        return self.rest_base + self.klines_path


def _preset(name, ws, rest, path, streams, limit, rate, spot) -> tuple[str, Preset]:
    return name, Preset(name, ws, rest, path, streams, limit, rate, spot)


PRESETS: Mapping[str, Preset] = MappingProxyType(dict([
    # Futures kline/ticker streams are only served under /market since 2026-04-23.
    _preset("binance-futures", "wss://fstream.binance.com/market", "https://fapi.binance.com",
            "/fapi/v1/klines", 200, 1500, 10.0, False),
    _preset("binance-spot", "wss://stream.binance.com:9443", "https://api.binance.com",
            "/api/v3/klines", 1024, 1000, 5.0, True),
    _preset("binance-us", "wss://stream.binance.us:9443", "https://api.binance.us",
            "/api/v3/klines", 1024, 1000, 5.0, True),
    _preset("binance-futures-testnet", "wss://fstream.binancefuture.com",
            "https://testnet.binancefuture.com", "/fapi/v1/klines", 200, 1500, 10.0, False),
    _preset("binance-spot-testnet", "wss://stream.testnet.binance.vision",
            "https://testnet.binance.vision", "/api/v3/klines", 1024, 1000, 5.0, True),
]))

DEFAULT_PRESET = "binance-futures"

#: The ~50 most liquid USD-M perpetuals (from general knowledge, not fetched: listings
#: change; a symbol the exchange does not know simply never streams).
DEFAULT_SYMBOLS: tuple[str, ...] = (
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT",
    "LINKUSDT", "AVAXUSDT", "SUIUSDT", "LTCUSDT", "BCHUSDT", "DOTUSDT", "NEARUSDT", "APTUSDT",
    "ARBUSDT", "OPUSDT", "FILUSDT", "ATOMUSDT", "ETCUSDT", "UNIUSDT", "AAVEUSDT", "INJUSDT",
    "WLDUSDT", "TIAUSDT", "SEIUSDT", "ENAUSDT", "ONDOUSDT", "1000PEPEUSDT", "1000SHIBUSDT",
    "1000BONKUSDT", "WIFUSDT", "HBARUSDT", "XLMUSDT", "ICPUSDT", "FETUSDT", "TAOUSDT",
    "CRVUSDT", "LDOUSDT", "ORDIUSDT", "JUPUSDT", "TRUMPUSDT", "PENGUUSDT", "1000FLOKIUSDT",
    "ALGOUSDT", "GALAUSDT", "SANDUSDT", "TONUSDT", "RENDERUSDT",
)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ValueError lists the valid names."""
    try:
        return PRESETS[name.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown exchange preset {name!r}; use one of {', '.join(PRESETS)}"
        ) from None


def custom_preset(ws_base: str, rest_base: str, like: str = DEFAULT_PRESET, *, market: str | None = None) -> Preset:
    """A preset for ``--ws-url``/``--rest-url``.

    Limits and the klines path come from ``like``, unless ``rest_base`` is the host
    of a known preset, whose settings then win (``--rest-url https://api.binance.com``
    needs ``/api/v3/klines`` whatever ``like`` says). The local exchange serves both
    klines paths, so either works there. A trailing ``/stream`` on ``ws_base`` is
    dropped, since ``stream_urls`` adds it.
    """
    ws = ws_base.strip().rstrip("/")
    rest = rest_base.strip().rstrip("/")
    if ws.endswith("/stream"):
        ws = ws[: -len("/stream")]
    for flag, url, given, schemes in (("--ws-url", ws, ws_base, ("ws", "wss")),
                                      ("--rest-url", rest, rest_base, ("http", "https"))):
        example = "wss://fstream.binance.com/market" if flag == "--ws-url" else "https://fapi.binance.com"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise ValueError(f"{flag} {given!r} is not a URL ({exc}); e.g. {example}") from None
        if parts.scheme not in schemes:
            raise ValueError(f"{flag} must start with {schemes[0]}:// or {schemes[1]}://, got {given!r}")
        if not parts.hostname:
            raise ValueError(f"{flag} {given!r} names no host; e.g. {example}")
    base = get_preset(like)
    host = urlsplit(rest).netloc
    for known in PRESETS.values():
        if urlsplit(known.rest_base).netloc == host:
            base = known
    return replace(base, name="custom", ws_base=ws, rest_base=rest, market=market or base.market)


#: The flags every command that talks to Binance has; the dashboard adds "--demo".
COMMON_FLAGS: tuple[str, ...] = ("--exchange",)


def _printable(text: str, limit: int = 200) -> str:
    """One line, at most ``limit`` characters: a server's words go into our status line."""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def region_block_message(preset_name: str, status: int, *, location: str | None = None,
                         flags: Sequence[str] = COMMON_FLAGS, detail: str | None = None) -> str:
    """Plain words for an HTTP 451/403 or a 3xx redirect on the handshake or a REST call.

    ``location``: a redirect's Location header (we never follow it: a stream that
    sends us elsewhere is a region block, a proxy or a captive portal, not Binance).
    ``flags``: the options the running command has; only those are suggested
    (``python -m store.ingest`` has ``--exchange``, the dashboard also ``--demo``).
    ``detail``: what the server said, e.g. Binance's "Service unavailable from a
    restricted location ..." (see ``market.binance.refusal_text``). Only presets other
    than ``preset_name`` are named.
    """
    if 300 <= status < 400:
        where = _printable(location) if location else "nowhere (no Location header)"
        head = (f"the exchange redirected the connection (HTTP {status}) to {where}, which we do not follow: "
                "this usually means a region block, a proxy or a captive portal")
    else:
        said = f': "{_printable(detail)}"' if detail else ""
        head = (f"Binance refused the connection (HTTP {status}){said}: this usually means the exchange "
                "is not available from your region (a region block)")
    tries: list[str] = []
    if "--exchange" in flags:
        others = sorted((n for n in PRESETS if n != preset_name), key=lambda n: n != "binance-us")
        tries = [f"--exchange {n}" + (" (for US users)" if n == "binance-us" else "") for n in others]
    if "--demo" in flags:
        tries.append("--demo to use the local exchange")
    if not tries:
        return head + "."
    if len(tries) > 1:
        tries[-1] = "or " + tries[-1]
    return f"{head}. Try {', '.join(tries)}."


# --------------------------------------------------------------------------- streams


def stream_names(symbols: Iterable[str], interval: str, tickers: bool = True) -> list[str]:
    """Combined-stream names, a symbol's kline next to its ticker (so a chunk keeps both)."""
    interval_ms(interval)  # a ValueError naming the valid intervals
    names: list[str] = []
    seen: set[str] = set()
    for raw in symbols:
        sym = raw.strip().lower()
        if not sym.isalnum():
            raise ValueError(f"symbol {raw!r} is not alphanumeric (e.g. BTCUSDT)")
        if sym in seen:
            continue
        seen.add(sym)
        names.append(f"{sym}@kline_{interval}")
        if tickers:
            names.append(f"{sym}@ticker")
    return names


def stream_urls(ws_base: str, streams: Sequence[str], max_streams: int) -> list[str]:
    """``{ws_base}/stream?streams=a/b/c`` URLs with at most ``max_streams`` streams each."""
    if max_streams < 1:
        raise ValueError(f"max_streams must be >= 1, got {max_streams}")
    base = ws_base.rstrip("/")
    return [f"{base}/stream?streams={'/'.join(streams[i:i + max_streams])}"
            for i in range(0, len(streams), max_streams)]
