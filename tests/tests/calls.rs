//! Calls through the B2BUA with SIPp on both sides: a trunk (SIPp uac on
//! 127.0.0.1) calls the company number, which rings manager 1001's
//! registered phones (SIPp uas). Answered calls, BYE from either side,
//! CANCEL, busy, no answer and parallel ringing, each with its events in
//! the CRM timeline; and a manager's call out through the trunk, which an
//! unauthenticated caller cannot make.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_tests::sip::{
    SipClient, SipReceiver, SipStream, authorization, peers_dir, sipp_finished, sipp_once,
};
use switchboard_tests::{Launch, Switchboard, free_port, free_ports};
use tokio::net::UdpSocket;
use tokio::process::Child;

const CALLER: &str = "+79161234567";
const COMPANY: &str = "+74950000000";

fn config(outbound: Option<SocketAddr>) -> String {
    format!(
        r#"
[sip]
# baresip 1.0 gives up when any challenge names an algorithm it lacks.
algorithms = ["MD5"]
ring_timeout = "2s"

[sip.security]
requests_per_second = 0

[[sip.users]]
extension = "1001"
password = "demo1001"
manager = "m1"

[[sip.users]]
extension = "1002"
password = "demo1002"
manager = "m2"

[[sip.trunks]]
name = "pbx"
addresses = ["127.0.0.1"]
outbound = "{}"

[[sip.numbers]]
number = "{COMPANY}"
manager = "m1"
"#,
        outbound.map(|a| a.to_string()).unwrap_or_default()
    )
}

async fn start(dir: &std::path::Path, outbound: Option<SocketAddr>) -> Switchboard {
    let file = dir.join("switchboard.toml");
    std::fs::write(&file, config(outbound)).unwrap();
    Launch::new(&dir.join("data"))
        .config(&file)
        .start()
        .await
        .unwrap()
}

/// A manager's phone: SIPp playing a UAS scenario in its own directory.
struct Phone {
    child: Child,
    work: PathBuf,
}

/// A SIPp UAS for extension 1001 on its own port, registered by a
/// third-party REGISTER (the test signs it with 1001's password).
async fn phone(sb: &Switchboard, dir: &std::path::Path, scenario: &str) -> Phone {
    let port = free_port().unwrap();
    let work = dir.join(format!("uas-{port}"));
    std::fs::create_dir_all(&work).unwrap();
    let child = sipp_once(&work, "20s")
        .unwrap()
        .arg("-sf")
        .arg(peers_dir().join("sipp").join(scenario))
        .args(["-p", &port.to_string()])
        .spawn()
        .unwrap();
    let mut reg = SipClient::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), sb.sip_udp.unwrap())
        .await
        .unwrap();
    let contact = format!("Contact: <sip:1001@127.0.0.1:{port}>\r\n");
    let ok = reg.register("1001", "demo1001", &contact).await.unwrap();
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    Phone { child, work }
}

/// The trunk's side: a SIPp UAC calling the company number, which must play
/// its scenario through.
async fn call(sb: &Switchboard, dir: &std::path::Path, scenario: &str) {
    let work = tempfile::Builder::new()
        .prefix("uac-")
        .tempdir_in(dir)
        .unwrap()
        .keep();
    let mut caller = sipp_once(&work, "20s")
        .unwrap()
        .arg(sb.sip_udp.unwrap().to_string())
        .arg("-sf")
        .arg(peers_dir().join("sipp").join(scenario))
        .args(["-s", COMPANY, "-set", "caller", CALLER])
        .spawn()
        .unwrap();
    sipp_finished(&mut caller, &work, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "caller ({scenario}): {e}\nswitchboard's log:\n{}",
                sb.logs()
            )
        });
}

/// Waits for the phone's scenario to end, which it must have played through.
async fn finished(phone: Phone, what: &str) {
    let Phone { mut child, work } = phone;
    sipp_finished(&mut child, &work, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{what}: the phone's {e}"));
}

/// Call events in the caller's timeline, oldest first, once `last` is there.
async fn call_events(sb: &Switchboard, last: &str) -> Vec<Value> {
    let is_call = |i: &Value| i["kind"].as_str().is_some_and(|k| k.starts_with("call."));
    sb.timeline_until(
        &format!("tel:{CALLER}"),
        is_call,
        last,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// Waits (10 s at most) for a `call.missed` with this reason.
async fn missed_with_reason(sb: &Switchboard, reason: &str) {
    let started = Instant::now();
    loop {
        let events = call_events(sb, "call.missed").await;
        if events
            .iter()
            .any(|e| e["kind"] == "call.missed" && payload(e)["reason"] == reason)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no {reason}: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect()
}

fn payload(e: &Value) -> &Value {
    if e["payload"].is_null() {
        &e["body"]["payload"]
    } else {
        &e["payload"]
    }
}

#[tokio::test]
async fn answered_call_hung_up_by_the_customer() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), None).await;
    let uas = phone(&sb, dir.path(), "uas_answer.xml").await;
    call(&sb, dir.path(), "uac_call.xml").await;
    finished(uas, "the phone").await;
    let events = call_events(&sb, "call.ended").await;
    assert_eq!(
        kinds(&events),
        ["call.ringing", "call.answered", "call.ended"],
        "{events:#?}"
    );
    let ended = payload(&events[2]);
    assert_eq!(ended["hung_up_by"], "customer", "{events:#?}");
    assert_eq!(ended["direction"], "inbound");
    assert_eq!(ended["trunk"], "pbx");
    assert_eq!(ended["dialled"], COMPANY);
    assert!(ended["duration_s"].as_f64().unwrap() >= 0.25, "{ended}");
    assert_eq!(events[1]["manager"], "m1", "{events:#?}");
}

#[tokio::test]
async fn answered_call_hung_up_by_the_manager() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), None).await;
    let uas = phone(&sb, dir.path(), "uas_answer_hangup.xml").await;
    call(&sb, dir.path(), "uac_hangup_by_callee.xml").await;
    finished(uas, "the phone").await;
    let events = call_events(&sb, "call.ended").await;
    assert_eq!(
        payload(events.last().unwrap())["hung_up_by"],
        "manager",
        "{events:#?}"
    );
}

#[tokio::test]
async fn cancel_busy_and_no_answer_are_missed_calls() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), None).await;

    // The caller gives up while it rings.
    let uas = phone(&sb, dir.path(), "uas_ring.xml").await;
    call(&sb, dir.path(), "uac_cancel.xml").await;
    finished(uas, "the phone got its CANCEL").await;
    let events = call_events(&sb, "call.missed").await;
    assert_eq!(
        payload(events.last().unwrap())["reason"],
        "abandoned",
        "{events:#?}"
    );

    // Busy: 486 back to the caller.
    let uas = phone(&sb, dir.path(), "uas_busy.xml").await;
    call(&sb, dir.path(), "uac_unanswered.xml").await;
    finished(uas, "the phone").await;
    missed_with_reason(&sb, "busy").await;

    // Nobody answers within ring_timeout (2 s): the phone is cancelled and
    // the caller gets 480.
    let uas = phone(&sb, dir.path(), "uas_ring.xml").await;
    let t = Instant::now();
    call(&sb, dir.path(), "uac_unanswered.xml").await;
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "answered before the ring timeout"
    );
    finished(uas, "the phone got its CANCEL").await;
    missed_with_reason(&sb, "no_answer").await;
}

#[tokio::test]
async fn a_call_to_a_manager_with_no_phone_registered_is_missed_as_nobody_available() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), None).await;
    // Nobody registered 1001: the caller gets 480 at once.
    let t = Instant::now();
    call(&sb, dir.path(), "uac_unanswered.xml").await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the caller waited for nobody"
    );
    missed_with_reason(&sb, "no_one_available").await;
}

#[tokio::test]
async fn every_registered_phone_rings_and_the_first_to_answer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), None).await;
    // 1001 has a desk phone that only rings and a softphone that answers.
    let ringing = phone(&sb, dir.path(), "uas_ring.xml").await;
    let answering = phone(&sb, dir.path(), "uas_answer.xml").await;
    call(&sb, dir.path(), "uac_call.xml").await;
    finished(answering, "the answering phone").await;
    finished(ringing, "the other phone was cancelled").await;
    let events = call_events(&sb, "call.ended").await;
    assert_eq!(
        kinds(&events),
        ["call.ringing", "call.answered", "call.ended"]
    );
}

#[tokio::test]
async fn only_authenticated_managers_call_out_through_the_trunk() {
    let dir = tempfile::tempdir().unwrap();
    let trunk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sb = start(dir.path(), Some(trunk.local_addr().unwrap())).await;
    let server = sb.sip_udp.unwrap();
    // Not from the trunk's address: an unknown source.
    let mut stranger = SipClient::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), server)
        .await
        .unwrap();
    let uri = format!("sip:+79998887766@{server}");
    let invite = stranger.request("INVITE", &uri, "1001", "fraud-1", 1, "");
    let challenge = stranger
        .exchange(invite.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(challenge.status(), Some(407));
    let auth = authorization(
        &challenge,
        "proxy-authenticate",
        "INVITE",
        &uri,
        "1001",
        "guessed-password",
    )
    .unwrap();
    let invite = stranger.request(
        "INVITE",
        &uri,
        "1001",
        "fraud-1",
        2,
        &format!("Proxy-Authorization: {auth}\r\n"),
    );
    let refused = stranger
        .exchange(invite.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refused.status(), Some(403));
    let mut buf = [0u8; 4096];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), trunk.recv_from(&mut buf))
            .await
            .is_err(),
        "nothing may reach the trunk"
    );

    // From the trunk's own address, a call to an extension (not a company
    // number) is a phone's call: it must authenticate too.
    let mut local = SipClient::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), server)
        .await
        .unwrap();
    let invite = local.request(
        "INVITE",
        &format!("sip:1002@{server}"),
        "1001",
        "ext-1",
        1,
        "",
    );
    let challenge = local
        .exchange(invite.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(challenge.status(), Some(407));

    // The manager with the right password: the INVITE goes to the trunk.
    let mut manager = SipClient::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10)), server)
        .await
        .unwrap();
    let invite = manager.request("INVITE", &uri, "1001", "out-1", 1, "");
    let challenge = manager
        .exchange(invite.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    let auth = authorization(
        &challenge,
        "proxy-authenticate",
        "INVITE",
        &uri,
        "1001",
        "demo1001",
    )
    .unwrap();
    let invite = manager.request(
        "INVITE",
        &uri,
        "1001",
        "out-1",
        2,
        &format!("Proxy-Authorization: {auth}\r\n"),
    );
    manager.send(invite.as_bytes()).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), trunk.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let sent = switchboard_sip::parse(&buf[..n]).unwrap();
    assert_eq!(sent.method(), Some("INVITE"));
    assert_eq!(
        sent.request_uri(),
        Some(format!("sip:+79998887766@{}", trunk.local_addr().unwrap()).as_str())
    );
    assert!(
        sent.header("proxy-authorization").is_none(),
        "credentials never leave"
    );
}

/// A 16-bit mono 8 kHz WAV of a 1 kHz tone, `seconds` long.
fn tone_wav(path: &std::path::Path, seconds: u32) {
    let samples: Vec<i16> = (0..8000 * seconds)
        .map(|i| (f64::from(i) * 2.0 * std::f64::consts::PI * 1000.0 / 8000.0).sin() * 12000.0)
        .map(|x| x as i16)
        .collect();
    let data_len = u32::try_from(samples.len() * 2).unwrap();
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// Zero crossings per second in the middle second of a 16-bit mono 8 kHz
/// WAV (2000 for a 1 kHz tone), and its peak.
fn tone_of(path: &std::path::Path) -> (usize, i16) {
    let bytes = std::fs::read(path).unwrap();
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .map(|i| &bytes[i + 8..])
        .unwrap();
    let samples: Vec<i16> = data
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mid = &samples[samples.len() / 2 - 4000..samples.len() / 2 + 4000];
    let crossings = mid.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    (
        crossings,
        mid.iter().map(|s| s.saturating_abs()).max().unwrap_or(0),
    )
}

/// A baresip softphone (Debian `baresip`) for `user`, configured from
/// `tests/peers/baresip/config.in`, playing `wav` as its microphone.
fn softphone(
    dir: &std::path::Path,
    user: &str,
    password: &str,
    server: SocketAddr,
    wav: &std::path::Path,
    answer: bool,
) -> std::path::PathBuf {
    let home = dir.join(format!("baresip-{user}"));
    std::fs::create_dir_all(home.join("rec")).unwrap();
    // baresip's RTP range is a pair; it listens for TLS one above its SIP port.
    let rtp = free_ports(2).unwrap();
    let config = std::fs::read_to_string(peers_dir().join("baresip/config.in"))
        .unwrap()
        .replace("@WAV@", wav.to_str().unwrap())
        .replace("@DIR@", home.to_str().unwrap())
        .replace("@SIPPORT@", &free_ports(2).unwrap().to_string())
        .replace("@RTPLO@", &rtp.to_string())
        .replace("@RTPHI@", &(rtp + 1).to_string());
    std::fs::write(home.join("config"), config).unwrap();
    std::fs::write(
        home.join("accounts"),
        format!(
            "<sip:{user}@{server};transport=udp>;auth_pass={password};regint=300;audio_codecs=PCMU{}\n",
            if answer { ";answermode=auto" } else { "" }
        ),
    )
    .unwrap();
    home
}

/// A real softphone calls another through Switchboard: both register with
/// digest auth, the callee answers, audio flows both ways (the callee hears
/// the caller's 1 kHz tone), and the call is in the feed.
#[tokio::test]
async fn a_softphone_calls_another_through_switchboard() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), None).await;
    let server = sb.sip_udp.unwrap();
    let wav = dir.path().join("tone.wav");
    tone_wav(&wav, 30);
    let callee_home = softphone(dir.path(), "1002", "demo1002", server, &wav, true);
    let caller_home = softphone(dir.path(), "1001", "demo1001", server, &wav, false);
    let mut callee = tokio::process::Command::new("baresip")
        .arg("-f")
        .arg(&callee_home)
        .args(["-t", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("baresip (Debian package baresip)");
    let started = Instant::now();
    while sb
        .gateway_metric("switchboard_sip_registrations", &[])
        .await
        .unwrap()
        < 1.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the callee did not register; log:\n{}",
            sb.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caller = tokio::process::Command::new("baresip")
        .arg("-f")
        .arg(&caller_home)
        .args(["-e", &format!("/dial sip:1002@{server}"), "-t", "6"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(caller.success(), "caller: {caller}");
    let _ = callee.kill().await;

    // The feed: an internal call from 1001, answered by Boris's 1002, ended.
    let started = Instant::now();
    let kinds = loop {
        let (_, body) = sb.crm_get("/v1/contacts/sip:1001/timeline").await.unwrap();
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let kinds: Vec<String> = items
            .iter()
            .rev()
            .filter_map(|i| i["kind"].as_str().map(str::to_owned))
            .collect();
        // The recording is finished (and announced) after the call ends.
        if kinds.iter().any(|k| k == "recording.ready") {
            let ended = items.iter().find(|i| i["kind"] == "call.ended").unwrap();
            assert_eq!(payload(ended)["direction"], "internal", "{ended}");
            assert_eq!(ended["manager"], "m2", "{ended}");
            break kinds;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{body:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        kinds,
        [
            "call.ringing",
            "call.answered",
            "call.ended",
            "recording.ready"
        ]
    );

    // What the callee heard (baresip's decoded dump) is the 1 kHz tone.
    let heard = std::fs::read_dir(callee_home.join("rec"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .expect("the callee recorded what it heard");
    let (crossings, peak) = tone_of(&heard);
    assert!(
        (1900..=2100).contains(&crossings),
        "{crossings} zero crossings a second"
    );
    assert!(peak > 4000, "peak {peak}");

    // Both played the tone, so both channels of the recording carry it.
    let (_, body) = sb.crm_get("/v1/contacts/sip:1001/timeline").await.unwrap();
    let ready = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "recording.ready")
        .unwrap();
    let rec = switchboard_tests::media::Recording::read(
        &dir.path()
            .join("data")
            .join(payload(ready)["path"].as_str().unwrap()),
    )
    .unwrap();
    let middle = rec.seconds() / 2.0;
    for (side, channel) in [("caller", &rec.left), ("callee", &rec.right)] {
        let crossings =
            switchboard_tests::media::crossings_per_s(channel, middle - 0.5, middle + 0.5);
        assert!(
            (1900.0..=2100.0).contains(&crossings),
            "{side}'s channel: {crossings} zero crossings a second"
        );
    }
}

#[tokio::test]
async fn a_phone_behind_an_edge_proxy_is_reached_through_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), None).await;
    let server = sb.sip_udp.unwrap();
    // The edge proxy (RFC 3327) registers 1001 on the phone's behalf from
    // one port and asks, with Path, to be sent its requests on another.
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut proxy = SipClient::bind(local, server).await.unwrap();
    let hop = format!("<sip:{};lr>", proxy.local());
    let contact = "sip:1001@192.0.2.10:5060";
    let mut registrar_side = SipClient::bind(local, server).await.unwrap();
    let ok = registrar_side
        .register(
            "1001",
            "demo1001",
            &format!("Supported: path\r\nPath: {hop}\r\nContact: <{contact}>\r\n"),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert_eq!(ok.header("path"), Some(hop.as_str()));

    // The trunk calls the company number.
    let mut trunk = SipClient::bind(local, server).await.unwrap();
    let uri = format!("sip:{COMPANY}@{server}");
    let invite = trunk
        .request("INVITE", &uri, CALLER, "path-call-1", 1, "")
        .replace(
            "Max-Forwards: 70\r\n",
            &format!(
                "Max-Forwards: 70\r\nContact: <sip:{CALLER}@{}>\r\n",
                trunk.local()
            ),
        )
        .replace(
            &format!("To: <sip:{CALLER}@switchboard.test>"),
            &format!("To: <{uri}>"),
        );
    trunk.send(invite.as_bytes()).await.unwrap();

    // The INVITE reaches the proxy, addressed to the phone's contact, with
    // the Path as its Route.
    let inv = proxy.next_request("INVITE").await.unwrap();
    assert_eq!(inv.request_uri(), Some(contact));
    assert_eq!(
        inv.header_values("route").collect::<Vec<_>>(),
        [hop.as_str()]
    );
    // The phone answers through the proxy, which record-routes.
    let mut ok = inv.response(200, "OK", Some("phone-tag"));
    ok.push_header("record-route", hop.clone());
    ok.push_header("contact", format!("<{contact}>"));
    proxy.send(&ok.to_bytes()).await.unwrap();
    // Switchboard's ACK follows the dialog's route set.
    let ack = proxy.next_request("ACK").await.unwrap();
    assert_eq!(ack.request_uri(), Some(contact));
    assert_eq!(
        ack.header_values("route").collect::<Vec<_>>(),
        [hop.as_str()]
    );

    // The caller gets its 200 and hangs up; the BYE goes the same way.
    let answered = trunk.final_response("INVITE").await.unwrap();
    assert_eq!(answered.status(), Some(200), "{answered:?}");
    let to = answered.header("to").unwrap().to_owned();
    let from = invite_from(&invite);
    let local = trunk.local();
    let ack = format!(
        "ACK sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-path-ack;rport\r\n\
Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: path-call-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    trunk.send(ack.as_bytes()).await.unwrap();
    let bye = ack
        .replace("ACK sip:", "BYE sip:")
        .replace("path-ack", "path-bye")
        .replace("CSeq: 1 ACK", "CSeq: 2 BYE");
    trunk.send(bye.as_bytes()).await.unwrap();
    let bye_in = proxy.next_request("BYE").await.unwrap();
    assert_eq!(bye_in.request_uri(), Some(contact));
    assert_eq!(
        bye_in.header_values("route").collect::<Vec<_>>(),
        [hop.as_str()]
    );
    let bye_ok = bye_in.response(200, "OK", None);
    proxy.send(&bye_ok.to_bytes()).await.unwrap();

    let events = call_events(&sb, "call.ended").await;
    assert_eq!(
        kinds(&events),
        ["call.ringing", "call.answered", "call.ended"],
        "{events:#?}"
    );
}

fn invite_from(request: &str) -> &str {
    request
        .lines()
        .find_map(|l| l.strip_prefix("From: "))
        .unwrap()
}

#[tokio::test]
async fn calls_over_tcp_reach_a_phone_registered_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), None).await;
    let server = sb.sip_tcp.unwrap();

    // 1001's phone registers over its own TCP connection.
    let mut phone = SipStream::connect(server).await.unwrap();
    let phone_addr = phone.local();
    let contact = format!("sip:1001@{phone_addr};transport=tcp");
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/TCP {};branch=z9hG4bK-tcpreg{cseq}\r\n\
Max-Forwards: 70\r\nFrom: <sip:1001@switchboard.test>;tag=r1\r\nTo: <sip:1001@switchboard.test>\r\n\
Call-ID: tcp-reg\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\n{auth}Content-Length: 0\r\n\r\n",
            phone_addr
        )
    };
    phone.send(register(1, "").as_bytes()).await.unwrap();
    let challenge = phone.final_response("REGISTER").await.unwrap();
    assert_eq!(challenge.status(), Some(401));
    let auth = authorization(
        &challenge,
        "www-authenticate",
        "REGISTER",
        &format!("sip:{server}"),
        "1001",
        "demo1001",
    )
    .unwrap();
    phone
        .send(register(2, &format!("Authorization: {auth}\r\n")).as_bytes())
        .await
        .unwrap();
    assert_eq!(
        phone.final_response("REGISTER").await.unwrap().status(),
        Some(200)
    );

    // The PBX calls the company number over TCP.
    let mut trunk = SipStream::connect(server).await.unwrap();
    let local = trunk.local();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let from = format!("<sip:{CALLER}@{local}>;tag=pbx1");
    let invite = format!(
        "INVITE sip:{COMPANY}@{server} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcpinv\r\n\
Max-Forwards: 70\r\nFrom: {from}\r\nTo: <sip:{COMPANY}@{server}>\r\nCall-ID: tcp-call\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:{CALLER}@{local};transport=tcp>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    trunk.send(invite.as_bytes()).await.unwrap();

    // The phone gets the INVITE down its registration's connection.
    let inv = phone.next_request("INVITE").await.unwrap();
    assert_eq!(inv.request_uri(), Some(contact.as_str()));
    assert!(
        inv.header("via").unwrap().starts_with("SIP/2.0/TCP"),
        "{inv:?}"
    );
    // The phone is offered the media relay, not the PBX's own port.
    let offered = String::from_utf8_lossy(&inv.body).into_owned();
    assert!(
        offered.contains("c=IN IP4 127.0.0.1\r\n") && !offered.contains("m=audio 4000 "),
        "{offered}"
    );
    let mut ringing = inv.response(180, "Ringing", Some("ph1"));
    ringing.push_header("contact", format!("<{contact}>"));
    phone.send(&ringing.to_bytes()).await.unwrap();
    let mut ok = inv.response(200, "OK", Some("ph1"));
    ok.push_header("contact", format!("<{contact}>"));
    phone.send(&ok.to_bytes()).await.unwrap();
    phone.next_request("ACK").await.unwrap();

    // The PBX is answered on its connection, ACKs and hangs up.
    let answered = trunk.final_response("INVITE").await.unwrap();
    assert_eq!(answered.status(), Some(200));
    let to = answered.header("to").unwrap().to_owned();
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:{server};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcp{method}\r\n\
Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: tcp-call\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    trunk.send(in_dialog("ACK", 1).as_bytes()).await.unwrap();
    trunk.send(in_dialog("BYE", 2).as_bytes()).await.unwrap();
    let bye = phone.next_request("BYE").await.unwrap();
    assert!(bye.header("via").unwrap().starts_with("SIP/2.0/TCP"));
    phone
        .send(&bye.response(200, "OK", None).to_bytes())
        .await
        .unwrap();
    assert_eq!(
        trunk.final_response("BYE").await.unwrap().status(),
        Some(200)
    );

    let events = call_events(&sb, "call.ended").await;
    assert_eq!(
        kinds(&events),
        ["call.ringing", "call.answered", "call.ended"],
        "{events:#?}"
    );
    assert_eq!(payload(&events[2])["hung_up_by"], "customer");
}
