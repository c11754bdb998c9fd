//! The engine settings a data directory was last served with (`DIR/engine.toml`), so that the offline
//! tools (`holdfast snapshot create`, `wal replay`, `reconcile`) rebuild and snapshot its state under
//! the same retention and windows as the server, not under this machine's defaults. What a snapshot
//! keeps depends on them: a shorter idempotency window, ended-reservation retention or payment event
//! retention would forget keys, reservations and payment event ids the server still honours. A file
//! written before a setting existed leaves that setting at its default.
//!
//! The server writes the file at start (atomically: a temporary file, synced, renamed, the directory
//! synced); the tools read it and fall back to the defaults for a directory that has none.

use crate::engine::EngineConfig;
use std::io::Write as _;
use std::path::Path;

const FILE: &str = "engine.toml";

/// Records `config` as the settings `dir` is served with.
pub fn save(dir: &Path, config: &EngineConfig) -> std::io::Result<()> {
    let text = format!(
        "# Written by holdfast serve at start: the engine settings this data directory runs with.\n\
         # The offline tools read them. Change the server's flags, not this file.\n\
         shards = {}\nttl_ms_min = {}\nttl_ms_max = {}\nhold_ms_max = {}\n\
         idempotency_window_ms = {}\nidempotency_keys_max = {}\nended_retention_ms = {}\n\
         active_per_shard_max = {}\npending_extension_ms = {}\npayment_event_retention_ms = {}\n\
         payment_events_max = {}\norders_max = {}\n",
        config.shards,
        config.ttl_ms_min,
        config.ttl_ms_max,
        config.hold_ms_max,
        config.idempotency_window_ms,
        config.idempotency_keys_max,
        config.ended_retention_ms,
        config.active_per_shard_max,
        config.pending_extension_ms,
        config.payment_event_retention_ms,
        config.payment_events_max,
        config.orders_max,
    );
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = crate::files::private_file(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The settings `dir` was last served with, or the defaults when it has none.
pub fn load(dir: &Path) -> Result<EngineConfig, String> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(EngineConfig::default()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    parse(&text).map_err(|why| format!("{}: {why}", path.display()))
}

fn parse(text: &str) -> Result<EngineConfig, String> {
    let mut config = EngineConfig::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.split_once('=').ok_or(format!("not `key = value`: {line}"))?;
        let value: u64 = value.trim().parse().map_err(|_| format!("{} is not a number", key.trim()))?;
        let size = || usize::try_from(value).map_err(|_| format!("{} is too large", key.trim()));
        match key.trim() {
            "shards" => config.shards = size()?,
            "ttl_ms_min" => config.ttl_ms_min = value,
            "ttl_ms_max" => config.ttl_ms_max = value,
            "hold_ms_max" => config.hold_ms_max = value,
            "idempotency_window_ms" => config.idempotency_window_ms = value,
            "idempotency_keys_max" => config.idempotency_keys_max = size()?,
            "ended_retention_ms" => config.ended_retention_ms = value,
            "active_per_shard_max" => config.active_per_shard_max = size()?,
            "pending_extension_ms" => config.pending_extension_ms = value,
            "payment_event_retention_ms" => config.payment_event_retention_ms = value,
            "payment_events_max" => config.payment_events_max = size()?,
            "orders_max" => config.orders_max = size()?,
            other => return Err(format!("unknown setting {other}")),
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_a_missing_file_means_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()), Ok(EngineConfig::default()));
        let config = EngineConfig {
            shards: 3,
            ended_retention_ms: 5,
            idempotency_window_ms: 7,
            payment_event_retention_ms: 30 * 24 * 60 * 60 * 1000,
            payment_events_max: 11,
            ..Default::default()
        };
        save(dir.path(), &config).expect("saved");
        assert_eq!(load(dir.path()), Ok(config));
        std::fs::write(dir.path().join(FILE), "shards = 0\n").expect("write");
        assert!(load(dir.path()).is_err_and(|e| e.contains("shards")));
    }
}
