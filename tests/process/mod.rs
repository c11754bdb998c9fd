//! Real processes: `holdfast crash-drill` writes through the log on real files and prints each
//! operation only once it is synced; the test kills it with SIGKILL at moments it varies, restarts it on
//! the same data directory, and after every kill opens the directory itself and checks every printed
//! operation against what recovery finds.

mod carts;
mod orders;

use holdfast::durable::Durable;
use holdfast::engine::{EngineConfig, ReservationId, ReservationState};
use holdfast_wal::storage::FsStorage;
use holdfast_wal::WalOptions;
use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[test]
fn sigkill_at_any_moment_loses_no_acknowledged_operation() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut acked: HashMap<ReservationId, ReservationState> = HashMap::new();
    let mut cycles_with_acks = 0;
    let cycles = 24;
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
            .args(["crash-drill", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the drill");
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            std::io::BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>()
        });
        // Kill at varied moments: some during recovery and start-up, most mid-write.
        std::thread::sleep(Duration::from_millis(40 + (cycle * 37 % 260)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let lines = reader.join().expect("reader");
        if !lines.is_empty() {
            cycles_with_acks += 1;
        }
        for line in &lines {
            let (word, id) = line.split_once(' ').expect("`word id` lines");
            let id = ReservationId::parse(id).expect("a reservation id");
            let state = match word {
                "reserved" => ReservationState::Active,
                "committed" => ReservationState::Committed,
                "released" => ReservationState::Released,
                other => panic!("unexpected line {other}"),
            };
            let seen = acked.entry(id).or_insert(state);
            if state != ReservationState::Active {
                *seen = state;
            }
        }
        let storage = FsStorage::new(dir.path().join("wal")).expect("dir");
        let (durable, _) = Durable::open(Arc::new(storage), EngineConfig::default(), WalOptions::default())
            .unwrap_or_else(|e| panic!("cycle {cycle}: recovery after SIGKILL failed: {e}"));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
        for (id, state) in &acked {
            let found = durable.engine().reservation(*id, now).map(|v| v.state);
            match state {
                // A reserve that was printed exists; it may have ended since (or expired).
                ReservationState::Active => assert!(found.is_some(), "cycle {cycle}: acknowledged {id} lost"),
                ended => assert_eq!(found, Some(*ended), "cycle {cycle}: {id} was acknowledged {ended}"),
            }
        }
        durable.engine().check_consistency().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        durable.close().expect("close");
    }
    assert!(cycles_with_acks >= cycles / 2, "only {cycles_with_acks} of {cycles} runs acknowledged anything");
    assert!(acked.len() > 100, "only {} operations acknowledged in all", acked.len());
}
