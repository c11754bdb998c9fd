//! Slow, silent and greedy clients are cut off on time, and a healthy client keeps being served
//! meanwhile. (Bounds here are generous upper limits on when a connection must be closed, not speed.)

use super::harness::{options, read_response, request, TestServer};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until the server closes `stream` (reads until EOF or reset) and returns how long it took.
async fn closed_after(stream: &mut TcpStream, started: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.expect("the server closed the connection");
    started.elapsed()
}

#[test]
fn slow_and_silent_clients_are_disconnected_while_others_are_served() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut o = options(dir.path());
    // The head timeout well apart from the idle one, so each is seen doing its own job.
    o.http.header_read_timeout = Duration::from_millis(400);
    o.http.body_read_timeout = Duration::from_millis(400);
    o.http.idle_timeout = Duration::from_millis(1500);
    let s = TestServer::start(o);
    s.stock("tee", 1_000_000);
    let addr = s.addr;
    s.block_on(async move {
        // A healthy client on one kept-alive connection, all along.
        let healthy = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let mut served = 0;
            let until = Instant::now() + Duration::from_millis(3000);
            while Instant::now() < until {
                stream.write_all(b"GET /v1/skus/tee HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write");
                let reply = read_response(&mut stream).await.expect("served");
                assert_eq!(reply.status, 200);
                served += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            served
        });

        let silent = tokio::spawn(async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            closed_after(&mut stream, started).await
        });
        let slow_headers = tokio::spawn(async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            for byte in b"GET /v1/skus/tee HTTP/1.1\r\nHost: t\r\n" {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            closed_after(&mut stream, started).await
        });
        let slow_body = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let head = "POST /v1/reservations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"items\":";
            stream.write_all(head.as_bytes()).await.expect("write");
            let started = Instant::now();
            let reply = read_response(&mut stream).await.expect("a 408");
            (reply.status, reply.header("connection").map(str::to_owned), started.elapsed())
        });
        let idle = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write");
            assert_eq!(read_response(&mut stream).await.expect("served").status, 200);
            let started = Instant::now();
            closed_after(&mut stream, started).await
        });

        let silent = silent.await.expect("silent");
        assert!(silent >= Duration::from_millis(350) && silent < Duration::from_millis(1200), "silent: {silent:?}");
        let slow = slow_headers.await.expect("slow headers");
        assert!(slow >= Duration::from_millis(350) && slow < Duration::from_millis(1200), "slow headers: {slow:?}");
        let (status, connection, took) = slow_body.await.expect("slow body");
        assert_eq!((status, connection.as_deref()), (408, Some("close")));
        assert!(took >= Duration::from_millis(350) && took < Duration::from_secs(3), "slow body: {took:?}");
        let idle = idle.await.expect("idle");
        assert!(idle >= Duration::from_millis(1300) && idle < Duration::from_secs(4), "idle: {idle:?}");
        let served = healthy.await.expect("healthy client");
        assert!(served >= 10, "the healthy client got {served} answers");
    });
    assert_eq!(s.counts("tee"), (1_000_000, 0, 0), "the slow body reserved nothing");
}

/// Opens a connection, has one request answered on it, and leaves it open and quiet.
async fn kept_alive(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write");
    assert_eq!(read_response(&mut stream).await.expect("served").status, 200);
    stream
}

#[test]
fn at_the_connection_cap_the_longest_idle_connection_makes_room() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut o = options(dir.path());
    o.http.connections_max = 50;
    let s = TestServer::start(o);
    let addr = s.addr;
    s.block_on(async move {
        let mut quiet = Vec::new();
        for _ in 0..50 {
            quiet.push(kept_alive(addr).await);
            tokio::time::sleep(Duration::from_millis(2)).await; // distinct idle ages
        }
        // Every slot holds a quiet keep-alive connection; new clients are served all the same.
        for n in 0..3 {
            let reply = super::harness::send(addr, request("GET", "/v1/skus/none", &[], None));
            let reply = tokio::time::timeout(Duration::from_secs(2), reply).await;
            assert_eq!(reply.expect("answered at once").expect("served").status, 404, "new client {n}");
        }
        // The oldest idle ones made room; the most recent is still open and served.
        let started = Instant::now();
        assert!(closed_after(&mut quiet[0], started).await < Duration::from_secs(2));
        let last = quiet.last_mut().expect("50");
        last.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write");
        assert_eq!(read_response(last).await.expect("still open").status, 200);
    });
    assert!(s.metric("holdfast_connections_evicted_total") >= 1.0);
    assert_eq!(s.metric("holdfast_connections_refused_total"), 0.0);
}

#[test]
fn connections_beyond_the_cap_are_closed_at_once_when_none_is_idle() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut o = options(dir.path());
    o.http.connections_max = 4;
    let s = TestServer::start(o);
    let addr = s.addr;
    s.block_on(async move {
        // Four connections in the middle of sending a request head: none can be closed for free.
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.expect("write");
            held.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let mut extra = TcpStream::connect(addr).await.expect("the kernel accepts");
        let took = closed_after(&mut extra, started).await;
        assert!(took < Duration::from_secs(2), "the fifth connection was held {took:?}");
        drop(held);
        // Slots come back once connections close.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reply = super::harness::send(addr, request("GET", "/healthz", &[], None)).await.expect("served");
        assert_eq!(reply.status, 200);
    });
    assert!(s.metric("holdfast_connections_refused_total") >= 1.0);
}

#[test]
fn stalled_uploads_do_not_take_the_in_flight_slots_of_real_requests() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut o = options(dir.path());
    o.http.in_flight_max = 4;
    o.http.body_read_timeout = Duration::from_secs(10);
    let s = TestServer::start(o);
    s.stock("tee", 100);
    let addr = s.addr;
    let stalled = s.block_on(async move {
        // Twenty heads that declare a body and send none of it.
        let mut stalled = Vec::new();
        for _ in 0..20 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let head = "POST /v1/reservations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n";
            stream.write_all(head.as_bytes()).await.expect("write");
            stalled.push(tokio::spawn(async move {
                let started = Instant::now();
                let reply = read_response(&mut stream).await.expect("a 408");
                (reply.status, started.elapsed())
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        stalled
    });
    let reply = s.post("/v1/reservations", &super::harness::reserve_body("tee", 1, "ada"));
    assert_eq!(reply.status, 201, "a real reserve beside stalled uploads: {}", reply.text());
    s.block_on(async move {
        for upload in stalled {
            let (status, took) = upload.await.expect("upload");
            // Cut by the minimum rate after its grace second, long before the 10 s body timeout.
            assert_eq!(status, 408);
            assert!(took < Duration::from_secs(4), "a stalled upload was held {took:?}");
        }
    });
    assert_eq!(s.counts("tee"), (99, 1, 0));
}
