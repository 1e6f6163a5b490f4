//! `kxdp demo-serve` (hidden): the demo's stand-in for the pods'
//! containers. `kxdp demo` starts one per pod with `ip netns exec POD`, so
//! its sockets live in the pod's network namespace.
//!
//! - `--http PORT`: answers every HTTP request with `200 OK` and a body
//!   naming the pod (`--name`, e.g. `web-1 (node-a)`), so a probe
//!   through a Service shows which backend answered.
//! - `--banner PORT`: writes one line naming the pod to each connection
//!   and closes it (the database stand-in: a connection either opens or
//!   does not).
//!
//! Runs until killed. Each connection is served on its own short-lived
//! thread with read/write timeouts, so a silent client cannot stall the
//! others.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

/// How long a connection may stay silent.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read (the probes send a few dozen bytes).
const MAX_REQUEST: usize = 8192;

/// Arguments of `kxdp demo-serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The text identifying this server in every answer.
    #[arg(long)]
    name: String,
    /// Serve HTTP on this TCP port (repeatable).
    #[arg(long)]
    http: Vec<u16>,
    /// Write a one-line banner on connections to this TCP port (repeatable).
    #[arg(long)]
    banner: Vec<u16>,
}

/// Runs the servers until the process is killed.
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    if args.http.is_empty() && args.banner.is_empty() {
        bail!("nothing to serve: give --http PORT and/or --banner PORT");
    }
    let mut threads = Vec::new();
    for (port, http) in args
        .http
        .iter()
        .map(|p| (*p, true))
        .chain(args.banner.iter().map(|p| (*p, false)))
    {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .with_context(|| format!("listen on TCP port {port}"))?;
        let text = args.name.clone();
        threads.push(std::thread::spawn(move || {
            accept_loop(&listener, &text, http)
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

fn accept_loop(listener: &TcpListener, text: &str, http: bool) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let text = text.to_owned();
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let _ = if http {
                answer_http(stream, &text)
            } else {
                answer_banner(stream, &text)
            };
        });
    }
}

fn answer_banner(mut stream: TcpStream, text: &str) -> std::io::Result<()> {
    stream.write_all(format!("{text}\n").as_bytes())
}

/// Reads the request head (up to the blank line, RFC 9112 §2.1) and
/// answers `200 OK` with `text`; the connection closes after the answer.
fn answer_http(mut stream: TcpStream, text: &str) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or(&[]));
    }
    let body = format!("{text}\n");
    let status = if head.starts_with(b"GET ") || head.starts_with(b"HEAD ") {
        "200 OK"
    } else {
        "405 Method Not Allowed"
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head.starts_with(b"HEAD ") { "" } else { &body }
    );
    stream.write_all(reply.as_bytes())
}
