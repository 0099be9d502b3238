//! The real `keygate` and `keygate-admin` binaries as child processes: find (or
//! build) them, start the gateway on a free loopback port and wait until it
//! listens, send it SIGTERM, and run admin commands.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The path of a workspace binary, built with `cargo build` if it is not there yet.
/// Tests run from `target/<profile>/deps`, xtask from `target/<profile>`; the
/// binaries sit in `target/<profile>`.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--bin", name])
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo build --bin {name}: {e}"));
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    assert!(
        path.is_file(),
        "{} not found after building",
        path.display()
    );
    path
}

/// The variable [`write_mock_config`] reads the OpenAI upstream's provider key from.
pub const MOCK_OPENAI_KEY_ENV: &str = "KEYGATE_MOCK_OPENAI_KEY";
/// The variable [`write_mock_config`] reads the Anthropic upstream's provider key from.
pub const MOCK_ANTHROPIC_KEY_ENV: &str = "KEYGATE_MOCK_ANTHROPIC_KEY";

/// Writes `DIR/keygate.toml` for a gateway on a free loopback port in front of the
/// mock upstream at `mock_url`: an OpenAI upstream (`gpt-4o*`,
/// `text-embedding-3-small`) and an Anthropic one (`claude-*`), with provider keys
/// from [`MOCK_OPENAI_KEY_ENV`] and [`MOCK_ANTHROPIC_KEY_ENV`], a 200 ms change-feed
/// poll and a price for every model the tests and the demo use.
pub fn write_mock_config(
    dir: &Path,
    mock_url: &str,
    database_url: &str,
) -> std::io::Result<PathBuf> {
    // A JSON string is a valid TOML basic string: quotes and backslashes escaped.
    let database_url = serde_json::Value::String(database_url.to_owned());
    let text = format!(
        r#"listen = "127.0.0.1:0"
database_url = {database_url}
key_prefix = "kg"
shutdown_grace = "10s"

[auth_cache]
poll_interval = "200ms"

[[upstreams]]
name = "mock-openai"
base_url = "{mock_url}/v1"
kind = "openai"
api_key_env = "{MOCK_OPENAI_KEY_ENV}"
models = ["gpt-4o*", "text-embedding-3-small"]

[[upstreams]]
name = "mock-anthropic"
base_url = "{mock_url}/v1"
kind = "anthropic"
api_key_env = "{MOCK_ANTHROPIC_KEY_ENV}"
models = ["claude-*"]

[prices."gpt-4o"]
input_per_mtok = 2.5
output_per_mtok = 10.0
cached_input_per_mtok = 1.25

[prices."gpt-4o-mini"]
input_per_mtok = 0.15
output_per_mtok = 0.6

[prices."text-embedding-3-small"]
input_per_mtok = 0.02
output_per_mtok = 0.0

[prices."claude-haiku-4-5"]
input_per_mtok = 1.0
output_per_mtok = 5.0

[prices."claude-3-5-sonnet-latest"]
input_per_mtok = 3.0
output_per_mtok = 15.0
"#
    );
    let path = dir.join("keygate.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A running `keygate` process. Killed on drop.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` (or https).
    pub base_url: String,
    log: Arc<Mutex<String>>,
}

impl GatewayProcess {
    /// Starts `keygate --config CONFIG` with extra environment `env`, and waits
    /// (up to 60 s) for its "listening on" line. The config should say
    /// `listen = "127.0.0.1:0"`.
    pub async fn start(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        let bin = workspace_binary("keygate");
        let mut command = Command::new(&bin);
        command
            .arg("--config")
            .arg(config)
            .env("KEYGATE_LOG", "info")
            .env_remove("KEYGATE_LISTEN")
            .env_remove("KEYGATE_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let (found_tx, mut found_rx) = tokio::sync::mpsc::unbounded_channel();
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            // Ends when the child closes stderr, that is when it exits.
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some((_, rest)) = line.split_once("listening on ") {
                        let url = rest.split_whitespace().next().unwrap_or_default();
                        let _ = found_tx.send(url.to_owned());
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let base_url = loop {
            let waited = tokio::time::timeout(Duration::from_millis(100), found_rx.recv()).await;
            if let Ok(Some(url)) = waited {
                break url;
            }
            if let Ok(Some(status)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let log = log.lock().map(|l| l.clone()).unwrap_or_default();
                panic!("keygate exited with {status} before listening:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "keygate did not start listening within 60 s"
            );
        };
        GatewayProcess {
            child,
            base_url,
            log,
        }
    }

    /// Everything the gateway has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The log once `done` holds for it, or as it is after `limit`: lines reach
    /// it through the gateway's log writer thread and its stderr pipe, a little
    /// after the answers they are about.
    pub async fn log_when(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let log = self.log();
            if done(&log) || tokio::time::Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// What an admin command printed.
#[derive(Debug)]
pub struct AdminOutput {
    /// Exit success.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `keygate-admin --database-url URL ARGS…`.
pub async fn admin(database_url: &str, args: &[&str]) -> AdminOutput {
    let bin = workspace_binary("keygate-admin");
    let output = Command::new(&bin)
        .arg("--database-url")
        .arg(database_url)
        .args(args)
        .env_remove("KEYGATE_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    AdminOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
