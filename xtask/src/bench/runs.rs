//! The load runs of `cargo xtask bench`: sequential, open-loop, closed-loop and
//! streaming figures, round by round over the active arms.

use std::future::Future;

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;

use super::{
    Arms, CLOSED_LOOP_CONNECTIONS, OPEN_LOOP_CONNECTIONS, PAUSE, Plan, RATES, STREAM_CONNECTIONS,
    STREAM_INTERVAL, STREAM_TOKENS, arm_target, micros, order, progress,
};
use crate::bench_load::{self, Latency, OpenLoop, Streaming, Throughput};
use crate::bench_report::Results;
use crate::bench_serve;
use crate::bench_setup::Upstream;

/// The load runs of one bench run, round by round over the active arms.
pub(super) struct Load<'a> {
    pub(super) plan: Plan,
    pub(super) arms: &'a Arms,
    pub(super) upstream: &'a mut Upstream,
    pub(super) plain: &'a Bytes,
    pub(super) streamed: &'a Bytes,
    pub(super) nginx_upstream: bool,
}

impl Load<'_> {
    /// Sequential, open-loop, closed-loop and streaming figures into `results`.
    pub(super) async fn measure(&mut self, results: &mut Results) -> Result<()> {
        self.upstream.command("reply 0").await?;
        self.upstream.command("chunk-delay-us 0").await?;
        println!("\nSequential requests on one keep-alive connection");
        for round in 0..self.plan.rounds {
            for arm in order(&self.arms.active, round) {
                let target = arm_target(self.arms, arm)?;
                let (body, time) = (self.plain.clone(), self.plan.sequential);
                let run: Latency = on_client_thread(move || async move {
                    bench_load::sequential(target, &body, time).await
                })
                .await?;
                progress(round, arm, &format!("p50 {}", micros(&run.histogram, 0.5)));
                results.sequential[arm.index()].merge(&run)?;
                tokio::time::sleep(PAUSE).await;
            }
        }
        for (i, rate) in RATES.into_iter().enumerate() {
            println!("\nOpen loop at {rate} requests/s");
            for round in 0..self.plan.rounds {
                for arm in order(&self.arms.active, round) {
                    let run: OpenLoop = bench_load::open_loop(
                        arm_target(self.arms, arm)?,
                        self.plain,
                        rate,
                        self.plan.open_loop,
                        OPEN_LOOP_CONNECTIONS,
                    )
                    .await?;
                    progress(
                        round,
                        arm,
                        &format!(
                            "p50 {}  p99 {}  missed {}",
                            micros(&run.latency.histogram, 0.5),
                            micros(&run.latency.histogram, 0.99),
                            run.missed
                        ),
                    );
                    results.open_loop[i][arm.index()].merge(&run)?;
                    tokio::time::sleep(PAUSE).await;
                }
            }
        }
        println!("\nClosed loop, {CLOSED_LOOP_CONNECTIONS} connections");
        for round in 0..self.plan.rounds {
            for arm in order(&self.arms.active, round) {
                let server = self.arms.pids[arm.index()].or(self.upstream.pid());
                let cpu_before = server
                    .map(bench_serve::cpu_micros_with_children)
                    .transpose()?;
                let run: Throughput = bench_load::closed_loop(
                    arm_target(self.arms, arm)?,
                    self.plain,
                    self.plan.closed_loop,
                    CLOSED_LOOP_CONNECTIONS,
                )
                .await?;
                if let (Some(pid), Some(before)) = (server, cpu_before) {
                    let used = bench_serve::cpu_micros_with_children(pid)?.saturating_sub(before);
                    results.closed_loop_cpu_us[arm.index()] += used;
                }
                progress(round, arm, &format!("{:.0} req/s", run.per_second()));
                results.closed_loop[arm.index()].merge(&run);
                tokio::time::sleep(PAUSE).await;
            }
        }
        println!(
            "\nStreams of {STREAM_TOKENS} chunks {} ms apart, {STREAM_CONNECTIONS} connections",
            if self.nginx_upstream {
                0
            } else {
                STREAM_INTERVAL.as_millis()
            }
        );
        self.upstream
            .command(&format!("reply {STREAM_TOKENS}"))
            .await?;
        self.upstream
            .command(&format!("chunk-delay-us {}", STREAM_INTERVAL.as_micros()))
            .await?;
        for round in 0..self.plan.rounds {
            for arm in order(&self.arms.active, round) {
                let target = arm_target(self.arms, arm)?;
                let (body, time) = (self.streamed.clone(), self.plan.streaming);
                let tokens = usize::try_from(STREAM_TOKENS)?;
                let mut run: Streaming = on_client_thread(move || async move {
                    bench_load::streaming(target, &body, tokens, time, STREAM_CONNECTIONS).await
                })
                .await?;
                if self.nginx_upstream {
                    // nginx's canned stream comes in one piece: no gaps to measure.
                    run.token_gaps.reset();
                }
                progress(
                    round,
                    arm,
                    &format!(
                        "first event p50 {}  token gap p50 {}",
                        micros(&run.first_event, 0.5),
                        micros(&run.token_gaps, 0.5)
                    ),
                );
                results.streaming[arm.index()].merge(&run)?;
                tokio::time::sleep(PAUSE).await;
            }
        }
        Ok(())
    }
}

/// Runs `run` on a current-thread runtime on a thread of its own, as a
/// single-threaded client would run it. The connections `run` opens, their
/// hyper tasks and the requests on them are then all polled by that one thread.
/// On the bench's multi-thread runtime, a connection's task and the request
/// waiting on it could sit on different threads, and the wake-up between them
/// was then part of every latency measured, in every arm.
async fn on_client_thread<F, Fut, T>(run: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the client thread's runtime")?
            .block_on(run())
    })
    .await
    .map_err(|e| anyhow!("the client thread failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_thread_polls_its_tasks_itself() {
        let caller = std::thread::current().id();
        let (client, spawned) = on_client_thread(|| async {
            let client = std::thread::current().id();
            // A task the client spawns (as a connection's) runs on the same thread.
            let spawned = tokio::spawn(async { std::thread::current().id() }).await?;
            Ok((client, spawned))
        })
        .await
        .unwrap();
        assert_ne!(client, caller);
        assert_eq!(spawned, client);
        let failed = on_client_thread(|| async { Err::<(), _>(anyhow!("no")) });
        assert_eq!(failed.await.unwrap_err().to_string(), "no");
    }
}
