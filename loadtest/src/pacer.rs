//! Sends happen when they were scheduled, to well under a millisecond: tokio's timer wheel has a
//! resolution of 1 ms, which would add up to a millisecond to every latency sample. One thread holds
//! every pending deadline in a heap and sleeps on the OS timer until the next is due (tens of
//! microseconds of slack), then wakes the task that waits for it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc;
use std::time::Instant;
use tokio::sync::oneshot;

type Wake = (Instant, oneshot::Sender<()>);

#[derive(Clone)]
pub struct Pacer {
    tx: mpsc::Sender<Wake>,
}

impl Pacer {
    /// Starts the pacer's thread; it ends when every `Pacer` clone is dropped.
    pub fn new() -> Pacer {
        let (tx, rx) = mpsc::channel::<Wake>();
        std::thread::Builder::new()
            .name("drill-pacer".into())
            .spawn(move || run(rx))
            .expect("spawning the pacer thread");
        Pacer { tx }
    }

    /// Returns at `at` (at once if it has passed).
    pub async fn until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (wake, woken) = oneshot::channel();
        if self.tx.send((at, wake)).is_ok() {
            let _ = woken.await;
        }
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new()
    }
}

fn run(rx: mpsc::Receiver<Wake>) {
    // Deadlines with a sequence number (which keeps equal times apart), and their waiters by number.
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut waiting: std::collections::HashMap<u64, oneshot::Sender<()>> = Default::default();
    let mut seq = 0u64;
    loop {
        let next = due.peek().map(|Reverse((at, _))| *at);
        let received = match next {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match received {
            Ok((at, wake)) => {
                seq += 1;
                due.push(Reverse((at, seq)));
                waiting.insert(seq, wake);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if due.is_empty() => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let at = next.expect("the heap is not empty");
                std::thread::sleep(at.saturating_duration_since(Instant::now()))
            }
        }
        let now = Instant::now();
        while due.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Reverse((_, n)) = due.pop().expect("peeked");
            if let Some(wake) = waiting.remove(&n) {
                let _ = wake.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_each_waiter_at_its_time_not_before() {
        let pacer = Pacer::new();
        let start = Instant::now();
        let waits: Vec<_> = [30u64, 10, 20]
            .into_iter()
            .map(|ms| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    pacer.until(start + Duration::from_millis(ms)).await;
                    (ms, start.elapsed())
                })
            })
            .collect();
        for w in waits {
            let (ms, took) = w.await.expect("task");
            assert!(took >= Duration::from_millis(ms), "woken at {took:?}, before {ms} ms");
        }
    }
}
