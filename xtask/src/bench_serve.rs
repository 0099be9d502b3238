//! The bench's servers, each in its own process: the mock upstream, the
//! baseline proxy and the OTLP sink (this binary re-run with a hidden
//! `bench --serve-…` argument), the real `keygate` binary, and the handles the
//! load generator keeps on them.
//!
//! A server child prints `listening on URL` on stdout once it accepts
//! connections, takes commands on stdin (one per line, answered `ok`) and exits
//! when its stdin closes, so it never outlives the bench.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keygate_test_utils::{MockUpstream, TestCerts};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinSet;

/// How long a server may take to say it listens.
const START_LIMIT: Duration = Duration::from_secs(60);
/// The same under valgrind, which runs a program some 50 times slower.
const WRAPPED_START_LIMIT: Duration = Duration::from_secs(300);

/// Runs the mock upstream until stdin closes: `MockUpstream` in its fast mode,
/// without request recording (its memory stays flat under load) and with
/// `TCP_NODELAY` (streamed chunks leave at once). Commands: `reply WORDS` (a
/// reply of that many words; a stream sends one per event) and
/// `chunk-delay-us MICROS` (the pause between streamed events) and
/// `max-streams N` (the HTTP/2 stream cap of connections accepted from then
/// on; 0 for none). With
/// `tls_dir`, it serves TLS with ALPN h2 and http/1.1 on a fresh certificate
/// whose CA it writes there as `ca.pem`.
pub(crate) fn serve_mock(tls_dir: Option<&Path>) -> Result<()> {
    runtime()?.block_on(async {
        let mock = match tls_dir {
            Some(dir) => {
                let certs = TestCerts::generate();
                certs.write_to(dir).with_context(|| {
                    format!("mock: cannot write certificates to {}", dir.display())
                })?;
                MockUpstream::start_tls(&certs).await
            }
            None => MockUpstream::start().await,
        };
        mock.set_recording(false);
        mock.set_nodelay(true);
        announce(&mock.url())?;
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            let mut words = line.split_whitespace();
            let (Some(command), Some(value)) = (words.next(), words.next()) else {
                bail!("mock: cannot read the command {line:?}");
            };
            let value: u64 = value
                .parse()
                .with_context(|| format!("mock: {value:?} is not a number"))?;
            match command {
                "reply" => mock.set_reply(&reply_of(value)),
                "chunk-delay-us" => mock.set_chunk_delay(Duration::from_micros(value)),
                "max-streams" => mock.set_max_streams(u32::try_from(value).ok().filter(|&n| n > 0)),
                _ => bail!("mock: unknown command {command:?}"),
            }
            say("ok")?;
        }
        mock.shutdown().await;
        Ok(())
    })
}

/// A reply of `words` words ("w1 w2 …"), or the mock's default for 0.
pub(crate) fn reply_of(words: u64) -> String {
    if words == 0 {
        return "The quick brown fox jumps over the lazy dog.".to_owned();
    }
    (1..=words)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the baseline until stdin closes: a bare HTTP/1.1 + HTTP/2 proxy on the
/// same stack as keygate (hyper-util's auto server, hyper-util's pooled legacy
/// client with keep-alive) that forwards method, path, headers and body to
/// `upstream` and streams the answer back. No auth, no billing, no body read.
pub(crate) fn serve_baseline(upstream: &str) -> Result<()> {
    let upstream: Uri = upstream
        .parse()
        .with_context(|| format!("baseline: {upstream:?} is not a URL"))?;
    let authority = upstream
        .authority()
        .context("baseline: the upstream URL has no host")?
        .clone();
    runtime()?.block_on(async move {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        announce(&format!("http://{addr}"))?;
        serve_until_stdin_closes(
            listener,
            |_| "ok".to_owned(),
            |stream| {
                let _ = stream.set_nodelay(true);
                let client = client.clone();
                let authority = authority.clone();
                service_fn(move |request| forward(client.clone(), authority.clone(), request))
            },
        )
        .await
    })
}

/// Runs the OTLP sink until stdin closes: answers every request 200 with an
/// empty body (an empty protobuf `ExportTraceServiceResponse`), after reading
/// its body whole. The command `stats` is answered `ok REQUESTS BYTES` (both
/// counted since the start).
pub(crate) fn serve_otlp_sink() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    runtime()?.block_on(async {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        announce(&format!("http://{addr}"))?;
        serve_until_stdin_closes(
            listener,
            |line| match line.trim() {
                "stats" => format!(
                    "ok {} {}",
                    requests.load(Ordering::Relaxed),
                    bytes.load(Ordering::Relaxed)
                ),
                _ => "ok".to_owned(),
            },
            |_| {
                let requests = Arc::clone(&requests);
                let bytes = Arc::clone(&bytes);
                service_fn(move |request: Request<Incoming>| {
                    let requests = Arc::clone(&requests);
                    let bytes = Arc::clone(&bytes);
                    async move {
                        use http_body_util::BodyExt as _;
                        let body = request.into_body().collect().await.map(|b| b.to_bytes());
                        requests.fetch_add(1, Ordering::Relaxed);
                        if let Ok(body) = body {
                            bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        }
                        let mut response = Response::new(Full::new(Bytes::new()));
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                })
            },
        )
        .await
    })
}

/// Serves each connection `listener` accepts with the service `service` makes
/// for it, and answers each line on stdin with `answer`'s reply, until stdin
/// closes; then the connections are aborted.
async fn serve_until_stdin_closes<S, B>(
    listener: TcpListener,
    answer: impl Fn(&str) -> String,
    service: impl Fn(&tokio::net::TcpStream) -> S,
) -> Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            line = stdin.next_line() => match line {
                Ok(Some(line)) => say(&answer(&line))?,
                _ => break,
            },
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let service = service(&stream);
                // Who waits: this loop's `JoinSet`, aborted when stdin closes.
                connections.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    Ok(())
}

type BaselineBody = Either<Incoming, Full<Bytes>>;

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

async fn forward(
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
    request: Request<Incoming>,
) -> Result<Response<BaselineBody>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build();
    let Ok(uri) = uri else {
        return Ok(bad_gateway());
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    for name in &HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::HOST);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in &HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(_) => Ok(bad_gateway()),
    }
}

fn bad_gateway() -> Response<BaselineBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        b"baseline: upstream failed",
    ))));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn announce(url: &str) -> Result<()> {
    say(&format!("listening on {url}"))
}

fn say(line: &str) -> Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// Which CPU a process is pinned to with `taskset`, when `--pin` asked for it.
pub(crate) type Cpu = Option<usize>;

/// How a server process is started: pinned with `taskset -c CPU`, or run
/// under a wrapper such as valgrind (`taskset` and valgrind both exec the
/// program in the same process, so the child's pid is the program's).
#[derive(Debug, Clone, Default)]
pub(crate) struct Launch {
    pub(crate) cpu: Cpu,
    /// A program and its arguments, the server's program after them.
    pub(crate) wrapper: Vec<String>,
}

impl Launch {
    pub(crate) fn pinned(cpu: Cpu) -> Launch {
        Launch {
            cpu,
            wrapper: Vec::new(),
        }
    }

    fn start_limit(&self) -> Duration {
        if self.wrapper.is_empty() {
            START_LIMIT
        } else {
            WRAPPED_START_LIMIT
        }
    }
}

/// `program` as `launch` says.
fn command(program: &Path, launch: &Launch) -> Command {
    match (&launch.wrapper[..], launch.cpu) {
        ([wrapper, args @ ..], _) => {
            let mut command = Command::new(wrapper);
            command.args(args).arg(program);
            command
        }
        ([], Some(cpu)) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        ([], None) => Command::new(program),
    }
}

/// A server child process of this binary (the mock or the baseline).
#[derive(Debug)]
pub(crate) struct ServerChild {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

impl ServerChild {
    /// Starts `this-binary bench ARGS…` and waits for its `listening on` line.
    pub(crate) async fn start(args: &[&str], launch: &Launch) -> Result<ServerChild> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut child = command(&exe, launch)
            .arg("bench")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} bench {}", exe.display(), args.join(" ")))?;
        let stdin = child.stdin.take().context("the child has no stdin")?;
        let stdout = child.stdout.take().context("the child has no stdout")?;
        let mut stdout = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(launch.start_limit(), stdout.next_line())
            .await
            .with_context(|| format!("bench {} did not start in time", args.join(" ")))??
            .with_context(|| format!("bench {} exited before listening", args.join(" ")))?;
        let url = line
            .strip_prefix("listening on ")
            .with_context(|| format!("bench {}: unexpected line {line:?}", args.join(" ")))?
            .to_owned();
        let addr = socket_addr(&url)?;
        Ok(ServerChild {
            child,
            stdin,
            stdout,
            url,
            addr,
        })
    }

    /// Sends one command line and waits for its `ok`.
    pub(crate) async fn command(&mut self, line: &str) -> Result<()> {
        match self.ask(line).await?.as_str() {
            "ok" => Ok(()),
            other => bail!("the server answered {line:?} with {other:?}"),
        }
    }

    /// Sends one command line and returns the line it answers.
    pub(crate) async fn ask(&mut self, line: &str) -> Result<String> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .context("the server did not answer a command")??;
        answer.with_context(|| format!("the server exited on {line:?}"))
    }

    /// The process id, for `/proc`.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Closes stdin, which ends the server, and waits for it (killed after 5 s).
    pub(crate) async fn stop(self) {
        let ServerChild {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// A running `keygate` whose log goes to a file (a pipe read by the bench would
/// cost the load generator CPU and memory).
#[derive(Debug)]
pub(crate) struct GatewayChild {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its stderr.
    pub(crate) log: PathBuf,
}

impl GatewayChild {
    /// Starts `keygate --config CONFIG` with `env`, logging at `info` (the request
    /// line included, as in production) to `log`, and waits for "listening on".
    pub(crate) async fn start(
        bin: &Path,
        config: &Path,
        env: &[(&str, &str)],
        log: PathBuf,
        launch: &Launch,
    ) -> Result<GatewayChild> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = command(bin, launch);
        command
            .arg("--config")
            .arg(config)
            .env("KEYGATE_LOG", "info")
            .env_remove("KEYGATE_LISTEN")
            .env_remove("KEYGATE_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let limit = launch.start_limit();
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some((_, rest)) = text.split_once("listening on ") {
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let addr = socket_addr(&url)?;
                return Ok(GatewayChild {
                    child,
                    url,
                    addr,
                    log,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!("keygate exited with {status} before listening:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("keygate did not listen within {limit:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id, for `/proc`.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to 15 s for a clean exit; `true` if it exited 0.
    pub(crate) async fn stop(mut self) -> bool {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = self.child.kill().await;
                false
            }
        }
    }
}

/// `http://HOST:PORT` → the socket address.
fn socket_addr(url: &str) -> Result<SocketAddr> {
    let rest = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => rest.to_owned(),
        // The TLS mock's certificate names `localhost`, which is loopback here.
        (None, Some(rest)) => rest.replacen("localhost:", "127.0.0.1:", 1),
        (None, None) => bail!("{url:?} is not an http:// or https:// URL"),
    };
    rest.trim_end_matches('/')
        .parse()
        .with_context(|| format!("{url:?} does not name an IP address and port"))
}

/// CPU time (user + system) process `pid` has used so far, in µs, from
/// `/proc/PID/stat` (clock ticks of 10 ms: read over runs of seconds).
pub(crate) fn cpu_micros(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name may hold spaces; the fields after its `)` are fixed.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after `)`.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|t| t.parse().ok())
            .with_context(|| format!("no CPU times in {path}"))
    };
    Ok((ticks(11)? + ticks(12)?) * 10_000)
}

/// The resident set size of process `pid`, in KiB, from `/proc/PID/status`.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// `pid` and its child processes (nginx's master and workers), from the parent
/// pid field of every `/proc/PID/stat`.
pub(crate) fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // After the command name's `)`: state, then the parent pid.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if parent == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

/// CPU time of `pid` and its children, in µs (see `cpu_micros`).
/// A child that exits between the listing and the read counts as 0.
pub(crate) fn cpu_micros_with_children(pid: u32) -> Result<u64> {
    let children: u64 = with_children(pid)[1..]
        .iter()
        .filter_map(|&child| cpu_micros(child).ok())
        .sum();
    Ok(cpu_micros(pid)? + children)
}

/// RSS of `pid` and its children, in KiB (see `rss_kib`).
pub(crate) fn rss_kib_with_children(pid: u32) -> Result<u64> {
    let children: u64 = with_children(pid)[1..]
        .iter()
        .filter_map(|&child| rss_kib(child).ok())
        .sum();
    Ok(rss_kib(pid)? + children)
}
