//! The load runs of `cargo xtask bench`: sequential, open-loop, closed-loop and
//! streaming figures, round by round over the active arms.

use anyhow::Result;
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
                let (target, body, time) = (
                    arm_target(self.arms, arm)?,
                    self.plain.clone(),
                    self.plan.sequential,
                );
                let run: Latency = bench_load::on_client_thread(move || async move {
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
                let (target, body, time) = (
                    arm_target(self.arms, arm)?,
                    self.streamed.clone(),
                    self.plan.streaming,
                );
                let tokens = usize::try_from(STREAM_TOKENS)?;
                let mut run: Streaming = bench_load::on_client_thread(move || async move {
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
