-- The schema users query. All times are UTC (TIMESTAMP without time zone, so
-- DuckDB's session TimeZone never shifts them). Column names are a contract:
-- see README.md. Statements are separated by ';' and must stay idempotent:
-- store/db.py runs this file on every first open and then adds any column an
-- older file lacks (see store/db.py: migrate).

-- Closed candles only, one row per (symbol, interval, open_time).
-- No PRIMARY KEY on purpose: on tens of millions of rows the ART index costs
-- gigabytes of memory and triples insert time; the writer keeps the key unique
-- by deleting the batch's keys within the batch's time range before inserting.
CREATE TABLE IF NOT EXISTS klines (
    symbol                 VARCHAR   NOT NULL,
    interval               VARCHAR   NOT NULL,
    open_time              TIMESTAMP NOT NULL,
    close_time             TIMESTAMP NOT NULL,
    open                   DOUBLE    NOT NULL,
    high                   DOUBLE    NOT NULL,
    low                    DOUBLE    NOT NULL,
    close                  DOUBLE    NOT NULL,
    volume                 DOUBLE    NOT NULL,
    quote_volume           DOUBLE,
    trades                 BIGINT,
    taker_buy_volume       DOUBLE,
    taker_buy_quote_volume DOUBLE
);

-- Latest 24h rolling ticker per symbol (about 50 rows, replaced in place).
CREATE TABLE IF NOT EXISTS tickers (
    symbol           VARCHAR PRIMARY KEY,
    event_time       TIMESTAMP NOT NULL,
    last_price       DOUBLE,
    price_change     DOUBLE,
    price_change_pct DOUBLE,
    open_price       DOUBLE,
    high_price       DOUBLE,
    low_price        DOUBLE,
    volume           DOUBLE,
    quote_volume     DOUBLE,
    trades           BIGINT
);

-- Indicators per closed candle, same key as klines. rsi/stoch_k/stoch_d are
-- NULL while warming up; signal is one of cross_up, cross_down, oversold,
-- overbought or NULL (market/indicators.py documents the rule).
CREATE TABLE IF NOT EXISTS indicators (
    symbol    VARCHAR   NOT NULL,
    interval  VARCHAR   NOT NULL,
    open_time TIMESTAMP NOT NULL,
    rsi       DOUBLE,
    stoch_k   DOUBLE,
    stoch_d   DOUBLE,
    signal    VARCHAR
);

-- Facts about the file, one row per key. 'market' names the exchange market
-- whose candles the file holds (a preset name: binance-futures, binance-spot,
-- ..., or demo); it is recorded on first write, and every writer refuses to mix
-- markets in one file (spot and futures BTCUSDT are different prices).
CREATE TABLE IF NOT EXISTS meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

-- Ranges of candles REST confirmed absent at the exchange (minutes with no
-- trades, maintenance): open_time in [start_time, end_time). Gap repair and
-- `python -m store.backfill --repair` skip them; history.gaps() reports them as
-- "missing at the exchange" rather than as holes to fill.
CREATE TABLE IF NOT EXISTS empty_ranges (
    symbol     VARCHAR   NOT NULL,
    interval   VARCHAR   NOT NULL,
    start_time TIMESTAMP NOT NULL,
    end_time   TIMESTAMP NOT NULL,
    checked_at TIMESTAMP NOT NULL
);

-- One row per applied schema version.
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER   NOT NULL,
    applied_at TIMESTAMP NOT NULL
);
