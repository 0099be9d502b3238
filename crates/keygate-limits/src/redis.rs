//! [`RedisLimiter`]: the limits every instance on one Redis shares. Each check
//! is one Lua script (`lua/check.lua`), so reading, deciding and debiting are
//! one atomic step on the server, on the server's clock. redis-rs's
//! `ConnectionManager` multiplexes every request over one connection and
//! reconnects by itself; every call has a deadline, and a call past it is
//! [`LimitError::Unavailable`]. Keys are `{prefix}:{key}`, so several
//! deployments (and test runs) can share one server.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::bucket;
use crate::{
    Check, LimitError, Limiter, Refusal, Refused, SLOT_RETRY, SLOT_TTL, Verdict, WindowState,
    validate,
};

/// Where and how to reach Redis.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Put before every key, with a `:`.
    pub prefix: String,
    /// Deadline for connecting and for each call.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisSettings")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The limits every instance on one Redis shares.
pub struct RedisLimiter {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    check: Script,
    adjust: Script,
    window: Script,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::fmt::Display) -> LimitError {
    LimitError::Unavailable(error.to_string())
}

impl RedisLimiter {
    /// A limiter on the Redis at `settings.url`. Connects lazily: a Redis that
    /// is down at start makes the first checks fail, not the start. Must be
    /// called inside a tokio runtime. Fails only for a URL that is not one.
    pub fn new(settings: &RedisSettings) -> Result<Self, LimitError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|_| LimitError::Invalid("redis_url is not a redis:// URL"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(Self {
            connection,
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            check: Script::new(include_str!("lua/check.lua")),
            adjust: Script::new(include_str!("lua/adjust.lua")),
            window: Script::new(include_str!("lua/window.lua")),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    /// Runs `call` under the deadline.
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LimitError> {
        // The manager has its own deadlines; this one also covers a reconnect.
        match tokio::time::timeout(self.timeout * 2, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("timed out")),
        }
    }

    /// Answers `PING`: whether the server is reachable now.
    pub async fn ping(&self) -> Result<(), LimitError> {
        let mut connection = self.connection.clone();
        let pong: String = self
            .timed(redis::cmd("PING").query_async(&mut connection))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(unavailable("unexpected answer to PING"))
        }
    }
}

fn int(value: &Value) -> Result<i64, LimitError> {
    match value {
        Value::Int(n) => Ok(*n),
        _ => Err(unavailable("unexpected script answer")),
    }
}

#[async_trait::async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, check: &Check, lease: &str) -> Result<Verdict, LimitError> {
        validate(check)?;
        let mut invocation = self.check.prepare_invoke();
        for rate in &check.rates {
            invocation.key(self.key(&rate.key));
        }
        for slot in &check.slots {
            invocation.key(self.key(&slot.key));
        }
        invocation
            .arg(check.rates.len())
            .arg(lease)
            .arg(u64::try_from(SLOT_TTL.as_millis()).unwrap_or(u64::MAX));
        for rate in &check.rates {
            invocation.arg(rate.limit).arg(rate.cost);
        }
        for slot in &check.slots {
            invocation.arg(slot.max);
        }
        let mut connection = self.connection.clone();
        let answer: Vec<Value> = self.timed(invocation.invoke_async(&mut connection)).await?;
        let numbers = answer.iter().map(int).collect::<Result<Vec<_>, _>>()?;
        let [refused, wait, levels @ ..] = numbers.as_slice() else {
            return Err(unavailable("short script answer"));
        };
        if levels.len() != check.rates.len() {
            return Err(unavailable("short script answer"));
        }
        let rates = check
            .rates
            .iter()
            .zip(levels)
            .map(|(r, level)| bucket::state(*level, r.limit))
            .collect();
        let n = check.rates.len();
        let refused = usize::try_from(*refused).unwrap_or(0);
        if refused == 0 {
            return Ok(Verdict::Admitted { rates });
        }
        let (by, retry_after) = if refused <= n {
            let wait = u64::try_from(*wait).unwrap_or(0);
            (Refused::Rate(refused - 1), Duration::from_millis(wait))
        } else {
            (Refused::Slot(refused - n - 1), SLOT_RETRY)
        };
        Ok(Verdict::Refused(Refusal {
            by,
            retry_after,
            rates,
        }))
    }

    async fn adjust(&self, key: &str, limit: u64, delta: i64) -> Result<(), LimitError> {
        if limit == 0 || limit > bucket::MAX_LIMIT {
            return Err(LimitError::Invalid("a rate limit is 1 to 1e9 per minute"));
        }
        // Bounded so the server's sums stay exact.
        let bound = i64::try_from(limit).unwrap_or(i64::MAX).saturating_mul(2);
        let delta = delta.clamp(-bound, bound);
        let mut invocation = self.adjust.key(self.key(key));
        invocation.arg(limit).arg(delta);
        let mut connection = self.connection.clone();
        let _: i64 = self.timed(invocation.invoke_async(&mut connection)).await?;
        Ok(())
    }

    async fn release(&self, keys: &[String], lease: &str) -> Result<(), LimitError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.zrem(self.key(key), lease).ignore();
        }
        let mut connection = self.connection.clone();
        let () = self.timed(pipe.query_async(&mut connection)).await?;
        Ok(())
    }

    async fn window(
        &self,
        key: &str,
        window: Duration,
        hit: bool,
    ) -> Result<WindowState, LimitError> {
        let len = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = self.window.key(self.key(key));
        invocation.arg(len).arg(if hit { "1" } else { "0" });
        let mut connection = self.connection.clone();
        let (count, left): (i64, i64) =
            self.timed(invocation.invoke_async(&mut connection)).await?;
        Ok(WindowState {
            count: u64::try_from(count).unwrap_or(0),
            resets_in: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
        })
    }
}
