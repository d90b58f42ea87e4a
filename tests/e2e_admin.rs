//! Hostile admin clients over real sockets: one that stalls mid-request is
//! closed, connections past the cap are turned away while an open one keeps
//! working, and an oversized add-bulk is refused before anything is built.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn http_addr(gw: &Gateway) -> String {
    gw.http_url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the socket; fails if it has not within
/// `WAIT`. Returns what the server sent before closing.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&got).into_owned()
}

/// One keep-alive GET on an open socket; returns the status line.
async fn get_keep_alive(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // /healthz answers "ok\n": the response is complete once it is in.
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_request_is_closed() {
    let gw = Gateway::start_with_config("[http]\nheader_read_timeout_ms = 200\n", &[]);
    for partial in [
        "",
        "GET /heal",
        "GET /healthz HTTP/1.1\r\n",
        "GET /healthz HTTP/1.1\r\nhost: gw\r\nx-slow: ",
    ] {
        let mut s = TcpStream::connect(http_addr(&gw)).await.unwrap();
        s.write_all(partial.as_bytes()).await.unwrap();
        read_until_closed(&mut s).await;
    }
    // Complete requests are still served.
    assert_eq!(gw.http_get("/healthz").await, (200, "ok\n".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_turned_away() {
    let gw = Gateway::start_with_config(
        "[http]\nmax_connections = 2\nheader_read_timeout_ms = 600000\n",
        &[],
    );
    let mut kept = TcpStream::connect(http_addr(&gw)).await.unwrap();
    assert!(get_keep_alive(&mut kept, "/healthz").await.contains("200"));
    let idle = TcpStream::connect(http_addr(&gw)).await.unwrap();
    for _ in 0..3 {
        let mut extra = TcpStream::connect(http_addr(&gw)).await.unwrap();
        let answer = read_until_closed(&mut extra).await;
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"),
            "{answer}"
        );
    }
    // The connection already open still works.
    assert!(get_keep_alive(&mut kept, "/healthz").await.contains("200"));
    // A freed slot is available again once the server has seen the close.
    drop(idle);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(http_addr(&gw)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut s).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed: {answer}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_add_bulk_is_refused_before_anything_is_built() {
    let gw = Gateway::start(&[]);
    let long = "p".repeat(100_000);
    for (prefix, count) in [
        ("ok-", 1_000_000u32),
        ("ok-", u32::MAX),
        ("ok-", 0),
        (long.as_str(), 100_000),
        (long.as_str(), 1),
        ("p".repeat(61).as_str(), 1),
        ("p".repeat(59).as_str(), 100_000),
    ] {
        let prefix = prefix.to_owned();
        let shown = format!("{}.. x {count}", &prefix[..prefix.len().min(8)]);
        let err = gw
            .admin_call(move |a| a.add_bulk(&prefix, count))
            .await
            .expect_err(&shown);
        match err {
            sealgate::admin::client::ClientError::Api { status, body } => {
                assert_eq!(
                    (status, body.error.as_str()),
                    (400, "bulk_out_of_range"),
                    "{shown}"
                );
                assert!(!body.message.contains("pppppppp"), "{}", body.message);
            }
            other => panic!("{shown}: {other}"),
        }
    }
    // The largest prefix that fits still works, and nothing was created before.
    let prefix = "p".repeat(60);
    let created = gw
        .admin_call(move |a| a.add_bulk(&prefix, 3))
        .await
        .unwrap();
    assert_eq!(created.devices.len(), 3);
    let list = gw.admin_call(|a| a.list()).await.unwrap();
    assert_eq!(list.devices.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "no sample sealgate_no_such_metric_total")]
async fn a_metric_that_does_not_exist_fails_the_test() {
    let gw = Gateway::start(&[]);
    gw.metric("sealgate_no_such_metric_total").await;
}

/// A client that pipelines requests and never reads the answers does not
/// hold its connection slot for ever: the header-read timeout runs while
/// hyper waits to write, and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_closed() {
    let gw = Gateway::start_with_config("[http]\nheader_read_timeout_ms = 200\n", &[]);
    let s = TcpStream::connect(http_addr(&gw)).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Far more answer bytes than the socket buffers hold: the server's
    // writes stall while this client reads nothing.
    let request = "GET /metrics HTTP/1.1\r\nhost: gw\r\n\r\n".repeat(200);
    let writer = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(request.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    // The client's stall, ten times the limit: the behaviour under test.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut answers = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    answers += count_and_trim(&mut tail);
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
    writer.abort();
    assert!(
        answers < 20_000,
        "the server answered every request of a client that stalled"
    );
}

/// Counts complete "HTTP/1.1 200" status lines in `tail` and keeps only the
/// bytes after the last one.
fn count_and_trim(tail: &mut Vec<u8>) -> usize {
    let pat = b"HTTP/1.1 200";
    let mut n = 0;
    let mut last = 0;
    let mut i = 0;
    while i + pat.len() <= tail.len() {
        if &tail[i..i + pat.len()] == pat {
            n += 1;
            last = i + pat.len();
            i += pat.len();
        } else {
            i += 1;
        }
    }
    tail.drain(..last);
    n
}

/// The device-initiated claim is read before any credential is checked: a
/// client that declares a body and never sends it all is closed once the
/// header-read timeout has passed again, instead of holding its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_body_is_closed() {
    let gw = Gateway::start_with_config("[http]\nheader_read_timeout_ms = 200\n", &[]);
    let mut s = TcpStream::connect(http_addr(&gw)).await.unwrap();
    let head = "POST /api/v1/claim HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"device_id\":";
    s.write_all(head.as_bytes()).await.unwrap();
    read_until_closed(&mut s).await;
    assert_eq!(gw.http_get("/healthz").await, (200, "ok\n".to_owned()));
}
