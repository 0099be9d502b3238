//! nginx for the bench: Debian's package (installed with `apt-get` when
//! missing), run as a child process with a generated config under
//! `target/bench/nginx-ROLE/`, either as the upstream (canned chat completions
//! with `usage`, JSON or SSE) or as a reverse proxy with upstream keep-alive.
//!
//! Each nginx runs in the foreground (`daemon off`) with a master and
//! `worker_processes auto` (one worker per core, as keygate runs one tokio
//! worker per core), logs errors only to its own prefix dir and is stopped with
//! SIGTERM (also on drop, so no worker outlives the bench).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::bench_serve::{Launch, reply_of};

/// Where Debian puts the binary (not on every `PATH`).
const DEBIAN_NGINX: &str = "/usr/sbin/nginx";
/// How long nginx may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(20);
/// Model and id in the canned answers.
const CANNED_MODEL: &str = "gpt-4o-mini";

/// The nginx binary: on `PATH`, at `/usr/sbin/nginx`, or installed now with
/// `apt-get install -y nginx` (an error when that fails).
pub(crate) fn ensure_installed() -> Result<PathBuf> {
    if let Some(found) = find_nginx() {
        return Ok(found);
    }
    eprintln!("bench: nginx not found; installing Debian's package (apt-get install -y nginx)");
    install_package("nginx")?;
    find_nginx().context("apt-get installed nginx but no nginx binary was found")
}

fn find_nginx() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from(DEBIAN_NGINX);
        debian.is_file().then_some(debian)
    })
}

/// `apt-get install -y PACKAGE`, with one `apt-get update` and a retry when the
/// first try fails (a fresh machine has no package lists).
pub(crate) fn install_package(package: &str) -> Result<()> {
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    let first = install().with_context(|| {
        format!("cannot run apt-get to install {package}; install it by hand (apt-get install {package})")
    })?;
    if first.success() {
        return Ok(());
    }
    eprintln!(
        "bench: apt-get install {package} failed ({first}); running apt-get update and trying again"
    );
    let _ = Command::new("apt-get")
        .arg("update")
        .stdout(Stdio::null())
        .status();
    let second = install()?;
    if !second.success() {
        bail!(
            "apt-get install -y {package} failed ({second}); install {package} by hand (apt-get needs root)"
        );
    }
    Ok(())
}

/// What an nginx instance does.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    /// Answers `POST /v1/chat/completions` with a canned chat completion (with
    /// `usage`), or with a canned SSE stream of `tokens` words when the request
    /// says `Accept: text/event-stream`.
    Upstream { tokens: u64 },
    /// `proxy_pass` to `upstream` with a keep-alive upstream pool.
    Proxy { upstream: SocketAddr },
}

impl Role {
    fn name(&self) -> &'static str {
        match self {
            Role::Upstream { .. } => "upstream",
            Role::Proxy { .. } => "proxy",
        }
    }
}

/// A running nginx.
#[derive(Debug)]
pub(crate) struct NginxChild {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its prefix directory (config, pid file, error log).
    pub(crate) prefix: PathBuf,
}

impl NginxChild {
    /// Starts `bin` in `role` under `target/bench/nginx-ROLE`, on a free
    /// loopback port (retried on a port taken in between). Under a wrapper
    /// (valgrind) it runs as one process (`master_process off`), which the
    /// wrapper can follow.
    pub(crate) fn start(
        bin: &Path,
        target_dir: &Path,
        role: &Role,
        launch: &Launch,
    ) -> Result<NginxChild> {
        let single = !launch.wrapper.is_empty();
        let suffix = if single { "-counted" } else { "" };
        let prefix = target_dir
            .join("bench")
            .join(format!("nginx-{}{suffix}", role.name()));
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start(bin, &prefix, role, launch) {
                Ok(child) => return Ok(child),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("nginx did not start")))
    }

    fn try_start(bin: &Path, prefix: &Path, role: &Role, launch: &Launch) -> Result<NginxChild> {
        for dir in ["", "logs", "temp"] {
            std::fs::create_dir_all(prefix.join(dir))
                .with_context(|| format!("cannot create {}", prefix.join(dir).display()))?;
        }
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let single = !launch.wrapper.is_empty();
        let config = config(prefix, addr, role, single)?;
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, config)
            .with_context(|| format!("cannot write {}", conf_path.display()))?;
        let error_log = prefix.join("logs").join("error.log");
        let _ = std::fs::remove_file(&error_log);
        let mut command = match (&launch.wrapper[..], launch.cpu) {
            ([program, args @ ..], _) => {
                let mut command = Command::new(program);
                command.args(args).arg(bin);
                command
            }
            ([], Some(cpu)) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpu.to_string()).arg(bin);
                command
            }
            ([], None) => Command::new(bin),
        };
        command
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut nginx = NginxChild {
            child,
            url: format!("http://{addr}"),
            addr,
            prefix: prefix.to_path_buf(),
        };
        let deadline = Instant::now() + START_LIMIT * if single { 3 } else { 1 };
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(nginx);
            }
            if let Some(status) = nginx.child.try_wait()? {
                let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                bail!(
                    "nginx ({}) exited with {status} before listening:\n{log}",
                    role.name()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx ({}) did not listen within {START_LIMIT:?}",
                    role.name()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id (the master; its workers are its children).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Errors nginx logged.
    pub(crate) fn errors(&self) -> Vec<String> {
        std::fs::read_to_string(self.prefix.join("logs").join("error.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                line.contains("[error]") || line.contains("[crit]") || line.contains("[alert]")
            })
            .map(str::to_owned)
            .collect()
    }

    /// SIGTERM (a fast shutdown), then waits up to 5 s before killing it.
    pub(crate) async fn stop(mut self) {
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for NginxChild {
    fn drop(&mut self) {
        // The master stops its workers on SIGTERM; a SIGKILL would orphan them.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// The whole `nginx.conf` for `role`, every path under `prefix`.
fn config(prefix: &Path, addr: SocketAddr, role: &Role, single: bool) -> Result<String> {
    let p = prefix.display();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by cargo xtask bench; rewritten on every run."
    );
    let _ = writeln!(out, "daemon off;");
    if single {
        let _ = writeln!(out, "master_process off;");
        let _ = writeln!(out, "worker_processes 1;");
    } else {
        let _ = writeln!(out, "master_process on;");
        let _ = writeln!(out, "worker_processes auto;");
    }
    let _ = writeln!(out, "worker_rlimit_nofile 16384;");
    let _ = writeln!(out, "pid {p}/nginx.pid;");
    let _ = writeln!(out, "error_log {p}/logs/error.log warn;");
    let _ = writeln!(out, "events {{ worker_connections 8192; }}");
    let _ = writeln!(out, "http {{");
    let _ = writeln!(out, "  access_log off;");
    for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(out, "  {temp}_temp_path {p}/temp/{temp};");
    }
    let _ = writeln!(out, "  keepalive_requests 100000000;");
    let _ = writeln!(out, "  keepalive_timeout 120s;");
    let _ = writeln!(out, "  tcp_nodelay on;");
    match role {
        Role::Upstream { tokens } => {
            let (json, sse) = canned(*tokens)?;
            let _ = writeln!(out, "  server {{");
            let _ = writeln!(out, "    listen {addr};");
            let _ = writeln!(out, "    location = /v1/chat/completions {{");
            let _ = writeln!(
                out,
                "      if ($http_accept = \"text/event-stream\") {{ rewrite ^ /canned-stream last; }}"
            );
            let _ = writeln!(out, "      default_type application/json;");
            let _ = writeln!(out, "      return 200 '{json}';");
            let _ = writeln!(out, "    }}");
            let _ = writeln!(out, "    location = /canned-stream {{");
            let _ = writeln!(out, "      internal;");
            let _ = writeln!(out, "      default_type text/event-stream;");
            let _ = writeln!(out, "      return 200 '{sse}';");
            let _ = writeln!(out, "    }}");
            let _ = writeln!(out, "  }}");
        }
        Role::Proxy { upstream } => {
            let _ = writeln!(out, "  upstream bench_upstream {{");
            let _ = writeln!(out, "    server {upstream};");
            let _ = writeln!(out, "    keepalive 64;");
            let _ = writeln!(out, "    keepalive_requests 100000000;");
            let _ = writeln!(out, "  }}");
            let _ = writeln!(out, "  server {{");
            let _ = writeln!(out, "    listen {addr};");
            let _ = writeln!(out, "    location / {{");
            let _ = writeln!(out, "      proxy_pass http://bench_upstream;");
            let _ = writeln!(out, "      proxy_http_version 1.1;");
            let _ = writeln!(out, "      proxy_set_header Connection \"\";");
            // Streamed answers go out as they come, as keygate and the baseline do.
            let _ = writeln!(out, "      proxy_buffering off;");
            let _ = writeln!(out, "    }}");
            let _ = writeln!(out, "  }}");
        }
    }
    let _ = writeln!(out, "}}");
    Ok(out)
}

/// The canned JSON answer and SSE stream (with a usage chunk), escaped for an
/// nginx single-quoted string (`\n` is nginx's own escape).
fn canned(tokens: u64) -> Result<(String, String)> {
    let text = reply_of(tokens);
    let words: Vec<&str> = text.split(' ').collect();
    let completion_tokens = words.len();
    let usage = json!({
        "prompt_tokens": 12,
        "completion_tokens": completion_tokens,
        "total_tokens": 12 + completion_tokens,
    });
    let answer = json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": CANNED_MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": usage,
        "system_fingerprint": null,
    });
    let chunk = |choices: serde_json::Value, usage: serde_json::Value| {
        json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": CANNED_MODEL,
            "system_fingerprint": null,
            "choices": choices,
            "usage": usage,
        })
    };
    let delta = |delta: serde_json::Value, finish: serde_json::Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut events = vec![chunk(
        delta(json!({"role": "assistant", "content": ""}), json!(null)),
        json!(null),
    )];
    for (i, word) in words.iter().enumerate() {
        let piece = if i == 0 {
            (*word).to_owned()
        } else {
            format!(" {word}")
        };
        events.push(chunk(
            delta(json!({ "content": piece }), json!(null)),
            json!(null),
        ));
    }
    events.push(chunk(delta(json!({}), json!("stop")), json!(null)));
    events.push(chunk(json!([]), usage));
    let mut sse = String::new();
    for event in events {
        let _ = write!(sse, "data: {event}\\n\\n");
    }
    sse.push_str("data: [DONE]\\n\\n");
    let json = answer.to_string();
    // nginx reads `'`, `$` and `\` in a quoted string; only the `\n` escapes may be there.
    if [&json, &sse.replace("\\n", "")]
        .iter()
        .any(|text| text.contains(['\'', '$', '\\']))
    {
        bail!("a canned answer holds a character nginx would read as syntax");
    }
    Ok((json, sse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_every_path_under_the_prefix() {
        let prefix = Path::new("/tmp/kg-bench/nginx-proxy");
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 10));
        let text = config(prefix, addr, &Role::Proxy { upstream }, false).unwrap();
        assert!(text.contains("keepalive 64;"));
        assert!(text.contains("proxy_set_header Connection \"\";"));
        assert!(text.contains("access_log off;"));
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(directive), Some(path)) = (words.next(), words.next()) else {
                continue;
            };
            if directive == "pid" || directive == "error_log" || directive.ends_with("_temp_path") {
                assert!(path.starts_with("/tmp/kg-bench/nginx-proxy/"), "{line}");
            }
        }
        for system in ["/var/", "/etc/", "/run/", "/usr/"] {
            assert!(!text.contains(system), "{system} in\n{text}");
        }
    }

    #[test]
    fn canned_stream_has_tokens_and_usage() {
        let (json, sse) = canned(10).unwrap();
        assert!(json.contains("\"usage\":{"));
        assert_eq!(sse.matches("\\n\\n").count(), 10 + 4);
        assert!(sse.contains("\"completion_tokens\":10"));
        assert!(sse.ends_with("data: [DONE]\\n\\n"));
    }
}
