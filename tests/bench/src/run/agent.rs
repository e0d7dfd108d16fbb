//! The cold-command cells through the connection agent: whole `openshell status` processes
//! (spawn to exit, as `cli_runs`) served by an agent in namespace A that (a) holds a warm
//! connection, or (b) dropped it after `--idle-disconnect` and reconnects, with 0-RTT from
//! the ticket it kept in memory. Whether each (b) sample's reconnect was accepted in 0-RTT
//! comes from the agent's own counters (`agent status -o json`).

use std::time::Duration;

use anyhow::{Context, bail};
use openshell_linkem::{Link, Side as NetSide};
use tokio::time::Instant;

use super::{Env, Stop, ok_output, output};
use crate::results::{AgentCli, CliRuns};
use crate::stats::Summary;

/// Samples per agent cell (more than `cli_runs`: the agent's tails are what is in question).
const SAMPLES: u32 = 10;
/// Short enough that waiting past it per sample stays cheap, long enough that the warm
/// samples (100 ms apart) never see it.
const IDLE_DISCONNECT: &str = "1s";

fn cmd(env: &Env, link: &Link, args: &[&str]) -> std::process::Command {
    let mut c = link.command(NetSide::A, &env.openshell);
    env.cli(&mut c);
    c.env_remove("OPENSHELL_NO_AGENT")
        .env_remove("XDG_RUNTIME_DIR")
        .args(["-g", "bench"])
        .args(args);
    c
}

async fn run(env: &Env, link: &Link, args: &[&str], stop: &Stop) -> anyhow::Result<String> {
    let out = output(cmd(env, link, args), Duration::from_secs(60), stop).await?;
    ok_output(&format!("openshell {}", args.join(" ")), &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn agent_status(env: &Env, link: &Link, stop: &Stop) -> anyhow::Result<serde_json::Value> {
    let text = run(env, link, &["agent", "status", "-o", "json"], stop).await?;
    serde_json::from_str(&text).context("agent status is not JSON")
}

fn accepted(st: &serde_json::Value) -> u64 {
    st["zero_rtt"]["accepted"].as_u64().unwrap_or(0)
}

/// One timed `status` through the agent; the wall time in ms.
async fn timed_status(env: &Env, link: &Link, stop: &Stop) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let text = run(env, link, &["status", "-o", "json"], stop).await?;
    let took = t0.elapsed().as_secs_f64() * 1000.0;
    let j: serde_json::Value = serde_json::from_str(&text).context("status is not JSON")?;
    if j["transport"]["via_agent"] != true {
        bail!("status did not go through the agent: {}", text.trim());
    }
    Ok(took)
}

fn record(runs: &mut CliRuns, walls: &mut Vec<f64>, r: anyhow::Result<f64>) {
    match r {
        Ok(ms) => walls.push(ms),
        Err(e) => {
            runs.failures += 1;
            runs.first_error.get_or_insert_with(|| format!("{e:#}"));
        }
    }
}

pub(super) async fn agent_runs(env: &Env, link: &Link, stop: &Stop) -> AgentCli {
    let mut res = AgentCli::default();
    if let Err(e) = measure(env, link, stop, &mut res).await {
        res.warm.failures += 1;
        res.warm.first_error.get_or_insert_with(|| format!("{e:#}"));
    }
    if let Err(e) = run(env, link, &["agent", "stop"], stop).await {
        env.log(format!("agent stop failed: {e:#}"));
    }
    res
}

async fn measure(env: &Env, link: &Link, stop: &Stop, res: &mut AgentCli) -> anyhow::Result<()> {
    run(
        env,
        link,
        &[
            "agent",
            "start",
            "--idle-disconnect",
            IDLE_DISCONNECT,
            "--persist",
            "2m",
        ],
        stop,
    )
    .await?;
    // The agent connects at start; one unmeasured command makes sure it has.
    timed_status(env, link, stop).await?;

    let mut walls = Vec::new();
    for _ in 0..SAMPLES {
        stop.check()?;
        let r = timed_status(env, link, stop).await;
        record(&mut res.warm, &mut walls, r);
        stop.sleep(Duration::from_millis(100)).await?;
    }
    res.warm.wall = Summary::of(&walls);

    let mut walls = Vec::new();
    for _ in 0..SAMPLES {
        stop.check()?;
        // Past the idle disconnect: wait until the agent says its connection is gone.
        let deadline = Instant::now() + Duration::from_secs(15);
        let before = loop {
            let st = agent_status(env, link, stop).await?;
            if st["upstream"]["connected"] == false {
                break st;
            }
            if Instant::now() > deadline {
                bail!("the agent kept its connection past {IDLE_DISCONNECT}: {st}");
            }
            stop.sleep(Duration::from_millis(100)).await?;
        };
        let r = timed_status(env, link, stop).await;
        let ok = r.is_ok();
        record(&mut res.reconnect, &mut walls, r);
        if ok {
            let after = agent_status(env, link, stop).await?;
            res.reconnect_zero_rtt
                .push(accepted(&after) > accepted(&before));
        }
    }
    res.reconnect.wall = Summary::of(&walls);
    Ok(())
}
