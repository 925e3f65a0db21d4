//! Calls per second through the B2BUA beside Kamailio's stateful proxy
//! (`tests/peers/kamailio/proxy.cfg`), in the same run: SIPp processes
//! running `tests/peers/sipp/uac_cps.xml` (INVITE, ACK, BYE, following
//! Record-Route) call a number whose phone is a SIPp `uas` registered with
//! each server. Switchboard takes the calls from a trunk on 127.0.0.1 to a
//! company number and writes the call events to its feed; Kamailio relays
//! them statefully.
//!
//! Needs `sipp`, `kamailio` and the release binary: `cargo build --release
//! -p switchboard && cargo bench -p switchboard-tests --bench sip_calls`.
//! Sizes: `SIP_CPS_CALLS` (per round, 20000), `SIP_CPS_SIPP` (uac
//! processes, 2), `SIP_CPS_IN_FLIGHT` (per process, 100), `SIP_CPS_ROUNDS` (2),
//! `SIP_CPS_MEDIA` (1: calls relayed and recorded, the default; 0: SDP
//! passed through, as Kamailio does).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Instant;

use switchboard_tests::env_usize;
use switchboard_tests::sip::{Kamailio, SipClient, peers_dir, sipp_load, sipp_totals};
use switchboard_tests::{bench_gateway, free_port};

#[derive(Debug, Default, Clone, Copy)]
struct Round {
    per_s: f64,
    ok: u64,
    failed: u64,
}

/// `procs` SIPp processes placing `total` calls to `service` at `target`.
async fn load(
    target: SocketAddr,
    service: &str,
    work: &Path,
    procs: usize,
    total: usize,
    in_flight: usize,
) -> Round {
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..procs {
        let dir = work.join(format!("uac-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = sipp_load(&dir)
            .unwrap()
            .arg(target.to_string())
            .arg("-sf")
            .arg(peers_dir().join("sipp/uac_cps.xml"))
            .args(["-s", service, "-set", "caller", "+79161234567"])
            .args(["-r", "100000", "-l"])
            .arg(in_flight.to_string())
            .arg("-m")
            .arg((total / procs).to_string())
            // A call whose answer is lost fails after 5 s instead of holding the round.
            .args([
                "-recv_timeout",
                "5000",
                "-trace_stat",
                "-stf",
                "stat.csv",
                "-fd",
                "1",
            ])
            .spawn()
            .unwrap();
        children.push((dir, child));
    }
    let mut round = Round::default();
    for (dir, mut child) in children {
        child.wait().await.unwrap();
        let (ok, failed) = sipp_totals(&dir.join("stat.csv"));
        round.ok += ok;
        round.failed += failed;
    }
    round.per_s = round.ok as f64 / started.elapsed().as_secs_f64();
    round
}

/// A SIPp UAS that answers every call, until dropped.
fn answering_phone(work: &Path, name: &str) -> (tokio::process::Child, u16) {
    let port = free_port().unwrap();
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let child = sipp_load(&dir)
        .unwrap()
        .args(["-sn", "uas", "-p", &port.to_string()])
        .spawn()
        .unwrap();
    (child, port)
}

async fn register(server: SocketAddr, password: &str, phone_port: u16) {
    let mut c = SipClient::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), server)
        .await
        .unwrap();
    let ok = c
        .register(
            "1001",
            password,
            &format!("Contact: <sip:1001@127.0.0.1:{phone_port}>\r\n"),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), Some(200), "{ok:?}");
}

#[tokio::main]
async fn main() {
    let total = env_usize("SIP_CPS_CALLS", 20_000);
    let procs = env_usize("SIP_CPS_SIPP", 2);
    let in_flight = env_usize("SIP_CPS_IN_FLIGHT", 100);
    let rounds = env_usize("SIP_CPS_ROUNDS", 2);
    let work = tempfile::tempdir().unwrap();

    // Switchboard: a trunk on 127.0.0.1 calling the company number that
    // rings extension 1001.
    let config = "[sip]\nalgorithms = [\"MD5\"]\n[sip.security]\nrequests_per_second = 0\n\
[[sip.users]]\nextension = \"1001\"\npassword = \"secret\"\nmanager = \"m1\"\n\
[[sip.trunks]]\nname = \"bench\"\naddresses = [\"127.0.0.1\"]\n\
[[sip.numbers]]\nnumber = \"+74950000000\"\nmanager = \"m1\"\n";
    // Media anchored and recorded (the default), or `SIP_CPS_MEDIA=0`:
    // SDP passed through, as Kamailio does.
    let media = env_usize("SIP_CPS_MEDIA", 1) != 0;
    let config = format!("{config}[media]\nenabled = {media}\n");
    let sb = bench_gateway(work.path(), &config).await.unwrap();
    let ours = sb.sip_udp.unwrap();
    let (_our_phone, our_phone_port) = answering_phone(work.path(), "uas-ours");

    // Kamailio: the same user registered, INVITEs relayed statefully. Its
    // per-request INFO log line would slow it down; ours logs none.
    let kamailio = Kamailio::start(
        work.path(),
        "proxy.cfg",
        |cfg| cfg.replace("debug=2", "debug=1"),
        &["-DD", "-E", "-m", "512", "-M", "16"],
    )
    .await
    .unwrap();
    let theirs = kamailio.addr;
    let (_their_phone, their_phone_port) = answering_phone(work.path(), "uas-theirs");

    register(ours, "secret", our_phone_port).await;
    register(theirs, "secret", their_phone_port).await;
    println!(
        "switchboard on {ours} (media relayed and recorded: {media}), kamailio on {theirs}; {procs} SIPp x {in_flight} calls in flight, {total} calls a round"
    );

    let (mut best_ours, mut best_theirs) = (Round::default(), Round::default());
    let (mut attempted, mut failed) = (0u64, 0u64);
    for r in 0..rounds {
        let t = load(theirs, "1001", work.path(), procs, total, in_flight).await;
        let o = load(ours, "+74950000000", work.path(), procs, total, in_flight).await;
        println!(
            "round {r}: kamailio {:.0} calls/s ({} failed)   switchboard {:.0} calls/s ({} failed)   ({:.2})",
            t.per_s,
            t.failed,
            o.per_s,
            o.failed,
            o.per_s / t.per_s
        );
        attempted += o.ok + o.failed;
        failed += o.failed;
        if o.per_s > best_ours.per_s {
            best_ours = o;
        }
        if t.per_s > best_theirs.per_s {
            best_theirs = t;
        }
    }
    drop(kamailio);
    println!(
        "switchboard failures: {failed} of {attempted} ({:.3} %)",
        failed as f64 * 100.0 / attempted.max(1) as f64
    );
    println!(
        "BENCH sip_cps={:.0} kamailio_cps={:.0} cps_ratio={:.2}",
        best_ours.per_s,
        best_theirs.per_s,
        best_ours.per_s / best_theirs.per_s
    );
}
