//! The one module that knows both the engine and the log: apply → append → sync → acknowledge, and
//! replay on start.
//!
//! Each mutation runs in the engine with a sink that encodes its record and appends it to the log
//! while the engine's locks are held, so the log's order is a valid replay order (see
//! `ARCHITECTURE.md`). The engine applies the mutation only after the append succeeded. The caller gets
//! the outcome together with the LSN that must be acknowledged (synced) before the outcome may be
//! shown to a client: its own record's LSN, or, for an outcome that wrote nothing (an idempotent
//! repeat), the last LSN appended at that moment, which covers the record the repeat depends on.
//! Refusals (sold out, expired) promise nothing and need no wait.

pub mod codec;

use crate::engine::{
    ConfigError, Engine, EngineConfig, Reason, Record, RecordSink, ReservationError, ReservationId,
    ReserveError, ReserveRequest, Reserved, SaleId, SinkRefused, SkuId, Stock, StockError,
};
use holdfast_wal::storage::Storage;
use holdfast_wal::{Lsn, Recovery, Wal, WalError, WalOptions};
use std::fmt;
use std::sync::Arc;

/// An outcome, and the LSN to wait for (`Wal::wait` or `Wal::durable`) before acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged<T> {
    pub value: T,
    pub lsn: Lsn,
}

/// A mutation's failure: the engine refused it, or the log could not take its record.
#[derive(Debug, Clone)]
pub enum Refused<E> {
    Engine(E),
    Log(WalError),
}

impl<E: fmt::Debug> fmt::Display for Refused<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Engine(e) => write!(f, "refused: {e:?}"),
            Refused::Log(e) => write!(f, "not logged: {e}"),
        }
    }
}

/// Why the engine could not be opened from its log.
#[derive(Debug)]
pub enum OpenError {
    Config(ConfigError),
    Log(WalError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Config(e) => e.fmt(f),
            OpenError::Log(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpenError {}

/// Appends each record the engine hands it, remembering the last LSN and any failure.
struct LogSink<'a> {
    wal: &'a Wal,
    buf: Vec<u8>,
    lsn: Option<Lsn>,
    error: Option<WalError>,
}

impl RecordSink for LogSink<'_> {
    fn append(&mut self, record: &Record) -> Result<(), SinkRefused> {
        codec::encode(record, &mut self.buf);
        match self.wal.append(&self.buf) {
            Ok(lsn) => {
                self.lsn = Some(lsn);
                Ok(())
            }
            Err(e) => {
                self.error = Some(e);
                Err(SinkRefused)
            }
        }
    }
}

/// An engine whose every mutation is in the write-ahead log before it is acknowledged.
pub struct Durable {
    engine: Engine,
    wal: Wal,
}

impl Durable {
    /// Opens the log in `storage`, replays it into a new engine, and is ready for mutations.
    pub fn open(
        storage: Arc<dyn Storage>,
        config: EngineConfig,
        options: WalOptions,
    ) -> Result<(Durable, Recovery), OpenError> {
        let engine = Engine::new(config).map_err(OpenError::Config)?;
        let replay = |_lsn: Lsn, payload: &[u8]| -> Result<(), String> {
            let record = codec::decode(payload).map_err(|e| e.to_string())?;
            engine.apply(&record).map_err(|e| e.to_string())
        };
        let (wal, recovery) = Wal::open(storage, options, 1, replay).map_err(OpenError::Log)?;
        Ok((Durable { engine, wal }, recovery))
    }

    /// The engine, for reads.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Syncs what was appended and stops the log.
    pub fn close(self) -> Result<(), WalError> {
        self.wal.close()
    }

    fn sink(&self) -> LogSink<'_> {
        LogSink { wal: &self.wal, buf: Vec::with_capacity(256), lsn: None, error: None }
    }

    /// The outcome of a mutation run against `sink`: its record's LSN, or the appended LSN when it
    /// wrote none; the log's error when the engine reports that the log refused.
    fn finish<T, E>(
        &self,
        sink: LogSink<'_>,
        result: Result<T, E>,
        log_refused: E,
    ) -> Result<Logged<T>, Refused<E>>
    where
        E: PartialEq,
    {
        match result {
            Ok(value) => Ok(Logged { value, lsn: sink.lsn.unwrap_or_else(|| self.wal.appended_lsn()) }),
            Err(e) if e == log_refused => {
                Err(Refused::Log(sink.error.expect("a refusing sink keeps its error")))
            }
            Err(e) => Err(Refused::Engine(e)),
        }
    }

    pub fn reserve(
        &self,
        req: &ReserveRequest,
        now_ms: u64,
    ) -> Result<Logged<Reserved>, Refused<ReserveError>> {
        let mut sink = self.sink();
        let result = self.engine.reserve(req, now_ms, &mut sink);
        self.finish(sink, result, ReserveError::LogRefused)
    }

    pub fn commit(&self, id: ReservationId, now_ms: u64) -> Result<Logged<()>, Refused<ReservationError>> {
        let mut sink = self.sink();
        let result = self.engine.commit(id, now_ms, &mut sink);
        self.finish(sink, result, ReservationError::LogRefused)
    }

    pub fn release(&self, id: ReservationId, now_ms: u64) -> Result<Logged<()>, Refused<ReservationError>> {
        let mut sink = self.sink();
        let result = self.engine.release(id, now_ms, &mut sink);
        self.finish(sink, result, ReservationError::LogRefused)
    }

    pub fn extend(
        &self,
        id: ReservationId,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Logged<u64>, Refused<ReservationError>> {
        let mut sink = self.sink();
        let result = self.engine.extend(id, ttl_ms, now_ms, &mut sink);
        self.finish(sink, result, ReservationError::LogRefused)
    }

    pub fn set_stock(
        &self,
        sku: &SkuId,
        on_hand: u64,
        now_ms: u64,
    ) -> Result<Logged<Stock>, Refused<StockError>> {
        let mut sink = self.sink();
        let result = self.engine.set_stock(sku, on_hand, now_ms, &mut sink);
        self.finish(sink, result, StockError::LogRefused)
    }

    pub fn adjust_stock(
        &self,
        sku: &SkuId,
        delta: i64,
        reason: &Reason,
        now_ms: u64,
    ) -> Result<Logged<Stock>, Refused<StockError>> {
        let mut sink = self.sink();
        let result = self.engine.adjust_stock(sku, delta, reason, now_ms, &mut sink);
        self.finish(sink, result, StockError::LogRefused)
    }

    pub fn set_sale_limit(
        &self,
        sale: &SaleId,
        per_user_max: u32,
        now_ms: u64,
    ) -> Result<Logged<()>, Refused<StockError>> {
        let mut sink = self.sink();
        let result = self.engine.set_sale_limit(sale, per_user_max, now_ms, &mut sink);
        self.finish(sink, result, StockError::LogRefused)
    }

    /// Expires what is due. Nobody waits on an expiry, but it is logged like any mutation; a log
    /// failure leaves the rest due for the next tick and is returned.
    pub fn expire_due(&self, now_ms: u64) -> Result<Logged<Vec<ReservationId>>, WalError> {
        let mut sink = self.sink();
        let expired = self.engine.expire_due(now_ms, &mut sink);
        if let Some(e) = sink.error {
            return Err(e);
        }
        Ok(Logged { value: expired, lsn: sink.lsn.unwrap_or_else(|| self.wal.appended_lsn()) })
    }
}
