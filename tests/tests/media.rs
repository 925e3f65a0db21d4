//! The media relay and call recording, end to end: the test plays both a
//! trunk (the customer) and manager 1001's phone, each with its own RTP
//! socket, and checks what each side receives, what the recording holds,
//! the events in the CRM and the recording served over HTTP with Range.
//! SIPp's pcap player and RTP echo make the same check with real G.711.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::Digest;
use switchboard_sip::Message;
use switchboard_tests::media::{
    Recording, alaw_linear, best_alignment, crossings_per_s, pcap_rtp, rtp, sdp, sdp_audio,
    ssrc_of, tone_frame,
};
use switchboard_tests::sip::{SipClient, SipReceiver, peers_dir, sipp_finished, sipp_once};
use switchboard_tests::{Launch, Switchboard, free_port};
use tokio::net::UdpSocket;

const CALLER: &str = "+79161234567";
const COMPANY: &str = "+74950000000";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `user_extra`: more keys for extension 1001's table.
fn config(rtp_timeout: &str, user_extra: &str) -> String {
    format!(
        r#"
[sip]
ring_timeout = "5s"

[sip.security]
requests_per_second = 0

[media]
rtp_timeout = "{rtp_timeout}"

[[sip.users]]
extension = "1001"
password = "demo1001"
manager = "m1"
{user_extra}

[[sip.trunks]]
name = "pbx"
addresses = ["127.0.0.1"]

[[sip.numbers]]
number = "{COMPANY}"
manager = "m1"
"#
    )
}

async fn start(dir: &Path, rtp_timeout: &str) -> Switchboard {
    start_with(dir, rtp_timeout, "").await
}

async fn start_with(dir: &Path, rtp_timeout: &str, user_extra: &str) -> Switchboard {
    let file = dir.join("switchboard.toml");
    std::fs::write(&file, config(rtp_timeout, user_extra)).unwrap();
    Launch::new(&dir.join("data"))
        .config(&file)
        .start()
        .await
        .unwrap()
}

/// A call set up by hand: the customer's trunk and 1001's phone, each with
/// an RTP socket, and the relay's address each was told to send to.
struct Call {
    trunk: SipClient,
    phone: SipClient,
    customer_rtp: UdpSocket,
    manager_rtp: UdpSocket,
    /// The phone's RTCP socket (named with a=rtcp).
    manager_rtcp: UdpSocket,
    /// Where the customer sends (from the 200 OK) and the phone sends
    /// (from the INVITE it got).
    relay_for_customer: SocketAddr,
    relay_for_manager: SocketAddr,
    call_id: String,
    ack: String,
    /// The trunk's last CSeq in the dialog.
    cseq: u32,
}

fn with_body(request: &str, body: &str) -> String {
    request.replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The trunk's INVITE to the company number offering `payloads`.
async fn invite(
    sb: &Switchboard,
    trunk: &mut SipClient,
    call_id: &str,
    media: SocketAddr,
    payloads: &str,
) -> String {
    let server = sb.sip_udp.unwrap();
    let uri = format!("sip:{COMPANY}@{server}");
    let invite = trunk
        .request("INVITE", &uri, CALLER, call_id, 1, "")
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
    let invite = with_body(&invite, &sdp(media, payloads));
    trunk.send(invite.as_bytes()).await.unwrap();
    invite
}

async fn establish(sb: &Switchboard, call_id: &str) -> Call {
    let server = sb.sip_udp.unwrap();
    let mut phone = SipClient::bind(LOCAL, server).await.unwrap();
    let contact = format!("Contact: <sip:1001@{}>\r\n", phone.local());
    let ok = phone.register("1001", "demo1001", &contact).await.unwrap();
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let mut trunk = SipClient::bind(LOCAL, server).await.unwrap();
    let customer_rtp = UdpSocket::bind((LOCAL, 0)).await.unwrap();
    let manager_rtp = UdpSocket::bind((LOCAL, 0)).await.unwrap();
    let manager_rtcp = UdpSocket::bind((LOCAL, 0)).await.unwrap();
    let invite = invite(
        sb,
        &mut trunk,
        call_id,
        customer_rtp.local_addr().unwrap(),
        "0 8 101",
    )
    .await;

    // The phone is offered the relay, never the customer's own address.
    let inv = phone.next_request("INVITE").await.unwrap();
    let relay_for_manager = sdp_audio(&inv.body).unwrap();
    assert_ne!(relay_for_manager, customer_rtp.local_addr().unwrap());
    let mut ok = inv.response(200, "OK", Some("phone-tag"));
    ok.push_header("contact", format!("<sip:1001@{}>", phone.local()));
    ok.push_header("content-type", "application/sdp");
    let answer = format!(
        "{}a=rtcp:{}\r\n",
        sdp(manager_rtp.local_addr().unwrap(), "0 101"),
        manager_rtcp.local_addr().unwrap().port()
    );
    ok.body = answer.into_bytes().into();
    phone.send(&ok.to_bytes()).await.unwrap();
    phone.next_request("ACK").await.unwrap();

    let answered = trunk.final_response("INVITE").await.unwrap();
    assert_eq!(answered.status(), Some(200), "{answered:?}");
    let relay_for_customer = sdp_audio(&answered.body).unwrap();
    assert_ne!(relay_for_customer, manager_rtp.local_addr().unwrap());
    let to = answered.header("to").unwrap().to_owned();
    let from = invite
        .lines()
        .find_map(|l| l.strip_prefix("From: "))
        .unwrap()
        .to_owned();
    let local = trunk.local();
    let ack = format!(
        "ACK sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{call_id}-ack;rport\r\n\
Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    trunk.send(ack.as_bytes()).await.unwrap();
    Call {
        trunk,
        phone,
        customer_rtp,
        manager_rtp,
        manager_rtcp,
        relay_for_customer,
        relay_for_manager,
        call_id: call_id.to_owned(),
        ack,
        cseq: 1,
    }
}

impl Call {
    /// The customer re-INVITEs with its audio `direction` (sendonly to
    /// hold, sendrecv to resume); the phone answers `answer`. Both see
    /// only the relay's addresses, and the directions pass through.
    async fn reinvite(&mut self, direction: &str, answer: &str) {
        self.cseq += 1;
        let cseq = self.cseq;
        let offer = sdp(self.customer_rtp.local_addr().unwrap(), "0 101")
            .replace("a=sendrecv", &format!("a={direction}"));
        let request = self
            .ack
            .replace("ACK sip:", "INVITE sip:")
            .replace("-ack;", &format!("-reinvite{cseq};"))
            .replace("CSeq: 1 ACK", &format!("CSeq: {cseq} INVITE"))
            .replace(
                "Max-Forwards: 70\r\n",
                &format!(
                    "Max-Forwards: 70\r\nContact: <sip:{CALLER}@{}>\r\n",
                    self.trunk.local()
                ),
            );
        self.trunk
            .send(with_body(&request, &offer).as_bytes())
            .await
            .unwrap();
        let inv = self.phone.next_request("INVITE").await.unwrap();
        let offered = String::from_utf8_lossy(&inv.body).into_owned();
        assert_eq!(
            sdp_audio(&inv.body).unwrap(),
            self.relay_for_manager,
            "{offered}"
        );
        assert!(offered.contains(&format!("a={direction}\r\n")), "{offered}");
        let mut ok = inv.response(200, "OK", None);
        ok.push_header("contact", format!("<sip:1001@{}>", self.phone.local()));
        ok.push_header("content-type", "application/sdp");
        ok.body = sdp(self.manager_rtp.local_addr().unwrap(), "0 101")
            .replace("a=sendrecv", &format!("a={answer}"))
            .into_bytes()
            .into();
        self.phone.send(&ok.to_bytes()).await.unwrap();
        self.phone.next_request("ACK").await.unwrap();
        let answered = self.trunk.final_response("INVITE").await.unwrap();
        assert_eq!(answered.status(), Some(200), "{answered:?}");
        let body = String::from_utf8_lossy(&answered.body).into_owned();
        assert_eq!(
            sdp_audio(&answered.body).unwrap(),
            self.relay_for_customer,
            "{body}"
        );
        assert!(body.contains(&format!("a={answer}\r\n")), "{body}");
        let ack = self
            .ack
            .replace("-ack;", &format!("-ack{cseq};"))
            .replace("CSeq: 1 ACK", &format!("CSeq: {cseq} ACK"));
        self.trunk.send(ack.as_bytes()).await.unwrap();
    }

    /// The customer hangs up; the phone gets the BYE and answers it.
    async fn hang_up(&mut self) {
        self.cseq += 1;
        let bye = self
            .ack
            .replace("ACK sip:", "BYE sip:")
            .replace("-ack;", "-bye;")
            .replace("CSeq: 1 ACK", &format!("CSeq: {} BYE", self.cseq));
        self.trunk.send(bye.as_bytes()).await.unwrap();
        let bye_in = self.phone.next_request("BYE").await.unwrap();
        self.phone
            .send(&bye_in.response(200, "OK", None).to_bytes())
            .await
            .unwrap();
        assert_eq!(
            self.trunk.final_response("BYE").await.unwrap().status(),
            Some(200)
        );
    }
}

/// Sends `n` 20 ms packets of a `freq` tone from `sock` to `to`.
async fn stream(sock: &UdpSocket, to: SocketAddr, freq: f64, ssrc: u32, n: u32) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0..n {
        tick.tick().await;
        let pkt = rtp(
            0,
            i == 0,
            i as u16,
            i * 160,
            ssrc,
            &tone_frame(freq, i * 160),
        );
        sock.send_to(&pkt, to).await.unwrap();
    }
}

/// What arrives on `sock` within `wait`: (source, SSRC) per packet.
async fn collect(sock: &UdpSocket, wait: Duration) -> Vec<(SocketAddr, u32)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok((n, src))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        got.push((src, ssrc_of(&buf[..n]).unwrap_or(0)));
    }
    got
}

/// Events of the call (its conversation), once `last` is there.
async fn events_of(sb: &Switchboard, call_id: &str, last: &str) -> Vec<Value> {
    let of_call = |i: &Value| i["conversation"] == call_id;
    sb.timeline_until(
        &format!("tel:{CALLER}"),
        of_call,
        last,
        Duration::from_secs(15),
    )
    .await
    .unwrap()
}

fn find<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    &events.iter().find(|e| e["kind"] == kind).unwrap()["payload"]
}

#[tokio::test]
async fn audio_flows_through_the_relay_is_recorded_and_served_with_range() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), "60s").await;
    let mut call = establish(&sb, "media-call-1").await;

    // Two seconds of audio each way: 1 kHz from the customer, 500 Hz from
    // the manager. Meanwhile a third party sprays loud 3 kHz packets at the
    // customer's relay port, and the customer presses 5 (RFC 4733).
    let spoofer = UdpSocket::bind((LOCAL, 0)).await.unwrap();
    let (manager_got, customer_got, (), (), ()) = tokio::join!(
        collect(&call.manager_rtp, Duration::from_millis(2600)),
        collect(&call.customer_rtp, Duration::from_millis(2600)),
        stream(
            &call.customer_rtp,
            call.relay_for_customer,
            1000.0,
            0xC0FFEE,
            100
        ),
        stream(
            &call.manager_rtp,
            call.relay_for_manager,
            500.0,
            0xBEEF,
            100
        ),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..50u32 {
                tick.tick().await;
                let pkt = rtp(
                    0,
                    false,
                    i as u16,
                    i * 160,
                    0x5B00F,
                    &tone_frame(3000.0, i * 160),
                );
                spoofer
                    .send_to(&pkt, call.relay_for_customer)
                    .await
                    .unwrap();
            }
            for _ in 0..3 {
                // The end of event 5, sent three times as RFC 4733 asks.
                let pkt = rtp(101, false, 200, 16_000, 0xC0FFEE, &[5, 0x80 | 10, 3, 0x20]);
                call.customer_rtp
                    .send_to(&pkt, call.relay_for_customer)
                    .await
                    .unwrap();
            }
        },
    );
    // Each side got the other's stream, from the relay, and nothing of the spoofer's.
    let from_customer = manager_got.iter().filter(|(_, s)| *s == 0xC0FFEE).count();
    assert!(
        from_customer >= 95,
        "the manager got {from_customer} of 100 packets"
    );
    assert!(
        manager_got
            .iter()
            .all(|(src, s)| *src == call.relay_for_manager && *s != 0x5B00F)
    );
    let from_manager = customer_got.iter().filter(|(_, s)| *s == 0xBEEF).count();
    assert!(
        from_manager >= 95,
        "the customer got {from_manager} of 100 packets"
    );
    assert!(
        customer_got
            .iter()
            .all(|(src, _)| *src == call.relay_for_customer)
    );
    let dropped = sb
        .gateway_metric(
            "switchboard_media_dropped_total",
            &[("reason", "strict_source")],
        )
        .await
        .unwrap();
    assert!(
        dropped >= 45.0,
        "{dropped} spoofed packets counted as dropped"
    );
    call.hang_up().await;

    // The events: call.ended names the DTMF and the recording; then
    // recording.ready with its size and checksum.
    let events = events_of(&sb, &call.call_id, "recording.ready").await;
    let ended = find(&events, "call.ended");
    assert_eq!(ended["dtmf"], "5", "{ended}");
    let ready = find(&events, "recording.ready");
    let rel = ready["path"].as_str().unwrap();
    assert_eq!(ended["recording"], rel);
    assert!(
        rel.starts_with("recordings/") && rel.ends_with("/media-call-1.wav"),
        "{rel}"
    );
    let path = dir.path().join("data").join(rel);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(ready["size"], bytes.len());
    assert_eq!(ready["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));

    // The file: stereo 8 kHz 16-bit, as long as the call, the customer's
    // tone left, the manager's right, no trace of the spoofed 3 kHz.
    let rec = Recording::read(&path).unwrap();
    assert_eq!((rec.channels, rec.sample_rate, rec.bits), (2, 8000, 16));
    let duration = ended["duration_s"].as_f64().unwrap();
    assert!(
        (rec.seconds() - duration).abs() <= 0.1,
        "recording {} s, call {duration} s",
        rec.seconds()
    );
    assert_eq!(ready["duration_s"].as_f64().unwrap(), rec.seconds());
    let left = crossings_per_s(&rec.left, 0.5, 1.8);
    let right = crossings_per_s(&rec.right, 0.5, 1.8);
    assert!(
        (1900.0..=2100.0).contains(&left),
        "left: {left} crossings/s (1 kHz is 2000)"
    );
    assert!(
        (950.0..=1050.0).contains(&right),
        "right: {right} crossings/s (500 Hz is 1000)"
    );

    // The CRM serves it whole and by range, as an audio element asks.
    let url = format!(
        "http://{}/v1/calls/{}/recording",
        sb.crm.unwrap(),
        call.call_id
    );
    let http = reqwest::Client::new();
    let whole = http.get(&url).bearer_auth(&sb.token).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "audio/wav");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().await.unwrap().as_ref(), &bytes[..]);
    let part = http
        .get(&url)
        .bearer_auth(&sb.token)
        .header("range", "bytes=44-1043")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        format!("bytes 44-1043/{}", bytes.len())
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[44..1044]);
    let beyond = http
        .get(&url)
        .bearer_auth(&sb.token)
        .header("range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    let none = http
        .get(format!(
            "http://{}/v1/calls/no-such-call/recording",
            sb.crm.unwrap()
        ))
        .bearer_auth(&sb.token)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
}

#[tokio::test]
async fn a_call_whose_media_stops_is_hung_up_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), "2s").await;
    let mut call = establish(&sb, "media-timeout-1").await;
    stream(&call.customer_rtp, call.relay_for_customer, 1000.0, 1, 25).await;
    // Silence from both: after the timeout both legs get a BYE.
    let bye_a = call.trunk.next_request("BYE").await.unwrap();
    let bye_b = call.phone.next_request("BYE").await.unwrap();
    for (side, bye) in [(&call.trunk, &bye_a), (&call.phone, &bye_b)] {
        side.send(&bye.response(200, "OK", None).to_bytes())
            .await
            .unwrap();
    }
    let events = events_of(&sb, &call.call_id, "call.ended").await;
    let ended = find(&events, "call.ended");
    assert_eq!(ended["cause"], "media_timeout", "{ended}");
    assert_eq!(ended["hung_up_by"], "system");
    // Its ports are free again: no media session is left.
    let started = Instant::now();
    while sb
        .gateway_metric("switchboard_media_sessions", &[])
        .await
        .unwrap()
        > 0.0
    {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_call_with_no_codec_in_common_gets_488_and_is_a_missed_call() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), "60s").await;
    let mut trunk = SipClient::bind(LOCAL, sb.sip_udp.unwrap()).await.unwrap();
    let media = SocketAddr::new(LOCAL, 40_000);
    invite(&sb, &mut trunk, "media-g729-1", media, "18 101").await;
    let refused: Message = trunk.final_response("INVITE").await.unwrap();
    assert_eq!(refused.status(), Some(488), "{refused:?}");
    let events = events_of(&sb, "media-g729-1", "call.missed").await;
    assert_eq!(find(&events, "call.missed")["reason"], "incompatible_media");
}

/// The gateway is killed mid-call: the recording on disk still opens in
/// a standard reader and holds all but (at most) the last second.
#[tokio::test]
async fn a_recording_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), "60s").await;
    let call = establish(&sb, "media-crash-1").await;
    tokio::join!(
        stream(&call.customer_rtp, call.relay_for_customer, 1000.0, 7, 150),
        stream(&call.manager_rtp, call.relay_for_manager, 500.0, 8, 150),
    );
    sb.kill9().await.unwrap();
    let day = time::OffsetDateTime::now_utc();
    let path = dir.path().join(format!(
        "data/recordings/{:04}/{:02}/{:02}/media-crash-1.wav",
        day.year(),
        u8::from(day.month()),
        day.day()
    ));
    let rec = Recording::read(&path).unwrap();
    assert_eq!(rec.channels, 2);
    assert!(
        rec.seconds() >= 2.0,
        "only {} s of 3 s survived",
        rec.seconds()
    );
    let left = crossings_per_s(&rec.left, 0.3, 1.8);
    assert!(
        (1900.0..=2100.0).contains(&left),
        "left: {left} crossings/s"
    );
    // Had the crash come between a write and its header update, the next
    // start repairs the header to what the file holds.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40..44].copy_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&[1, 2]);
    std::fs::write(&path, &bytes).unwrap();
    let again = start(dir.path(), "60s").await;
    again
        .wait_for_log(
            "recording cut short by a crash repaired",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let repaired = Recording::read(&path).unwrap();
    assert_eq!(repaired.left.len(), rec.left.len());
}

/// SIPp plays real G.711 A-law speech (its g711a.pcap) into a call whose
/// callee is a SIPp UAS echoing RTP back: the recording's left channel is
/// that audio and its right channel the echo, found by correlation.
#[tokio::test]
async fn sipp_pcap_audio_and_its_echo_are_both_in_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), "60s").await;
    let server = sb.sip_udp.unwrap();
    let pcap = Path::new("/usr/share/sip-tester/g711a.pcap");
    let reference: Vec<i16> = pcap_rtp(pcap)
        .unwrap()
        .iter()
        .filter(|(pt, _)| *pt == 8)
        .flat_map(|(_, p)| p.iter().map(|b| alaw_linear(*b)))
        .collect();

    // The callee: SIPp answering with PCMA and echoing RTP.
    let uas_port = free_port().unwrap();
    let uas_work = dir.path().join("uas");
    std::fs::create_dir_all(&uas_work).unwrap();
    let mut uas = sipp_once(&uas_work, "30s")
        .unwrap()
        .arg("-sf")
        .arg(peers_dir().join("sipp/uas_echo.xml"))
        .args(["-p", &uas_port.to_string(), "-rtp_echo"])
        .spawn()
        .expect("sipp (Debian package sip-tester)");
    let mut reg = SipClient::bind(LOCAL, server).await.unwrap();
    let contact = format!("Contact: <sip:1001@127.0.0.1:{uas_port}>\r\n");
    assert_eq!(
        reg.register("1001", "demo1001", &contact)
            .await
            .unwrap()
            .status(),
        Some(200)
    );

    // The caller: SIPp playing the pcap after the answer.
    let uac_work = dir.path().join("uac");
    std::fs::create_dir_all(&uac_work).unwrap();
    let mut uac = sipp_once(&uac_work, "30s")
        .unwrap()
        .arg(server.to_string())
        .arg("-sf")
        .arg(peers_dir().join("sipp/uac_pcap.xml"))
        .args(["-s", COMPANY, "-set", "caller", CALLER])
        .spawn()
        .unwrap();
    sipp_finished(&mut uac, &uac_work, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("uac: {e}\nlog:\n{}", sb.logs()));
    sipp_finished(&mut uas, &uas_work, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("uas: {e}"));

    let (_, body) = sb
        .crm_get(&format!("/v1/contacts/tel:{CALLER}/timeline"))
        .await
        .unwrap();
    let call_id = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["conversation"].as_str())
        .unwrap()
        .to_owned();
    let events = events_of(&sb, &call_id, "recording.ready").await;
    let ended = find(&events, "call.ended");
    let rec = Recording::read(
        &dir.path()
            .join("data")
            .join(find(&events, "recording.ready")["path"].as_str().unwrap()),
    )
    .unwrap();
    let duration = ended["duration_s"].as_f64().unwrap();
    assert!(
        (rec.seconds() - duration).abs() <= 0.1,
        "recording {} s, call {duration} s",
        rec.seconds()
    );
    let (left_at, left) = best_alignment(&rec.left, &reference);
    let (right_at, right) = best_alignment(&rec.right, &reference);
    assert!(
        left > 0.95,
        "the customer's channel matches the sent audio only {left:.3}"
    );
    assert!(
        right > 0.95,
        "the manager's channel matches the echo only {right:.3}"
    );
    // The echo comes back after the original, within a fraction of a second.
    assert!(
        right_at >= left_at && right_at - left_at < 1600,
        "left at {left_at}, right at {right_at}"
    );
}

/// Each side's packets reach the other through the relay: (customer →
/// manager, manager → customer) counts of `n` sent each way.
async fn exchange(call: &Call, n: u32) -> (usize, usize) {
    let wait = Duration::from_millis(u64::from(n) * 20 + 500);
    let (to_manager, to_customer, (), ()) = tokio::join!(
        collect(&call.manager_rtp, wait),
        collect(&call.customer_rtp, wait),
        stream(&call.customer_rtp, call.relay_for_customer, 1000.0, 11, n),
        stream(&call.manager_rtp, call.relay_for_manager, 500.0, 12, n),
    );
    (
        to_manager.iter().filter(|(_, s)| *s == 11).count(),
        to_customer.iter().filter(|(_, s)| *s == 12).count(),
    )
}

#[tokio::test]
async fn hold_and_resume_by_reinvite_keep_the_call_and_its_audio() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), "2s").await;
    let mut call = establish(&sb, "media-hold-1").await;
    let (a, b) = exchange(&call, 25).await;
    assert!(a >= 24 && b >= 24, "before hold: {a} and {b} of 25");

    // RTCP goes across too: to the port the phone named with a=rtcp.
    let rtcp_to = SocketAddr::new(
        call.relay_for_customer.ip(),
        call.relay_for_customer.port() + 1,
    );
    let report = [
        0x80, 200, 0, 6, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    call.customer_rtp.send_to(&report, rtcp_to).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(
        Duration::from_secs(2),
        call.manager_rtcp.recv_from(&mut buf),
    )
    .await
    .expect("RTCP relayed to the phone's a=rtcp port")
    .unwrap();
    assert_eq!(&buf[..n], &report[..]);
    assert_eq!(from.port(), call.relay_for_manager.port() + 1);

    // Hold: no audio for longer than the RTP timeout, and the call stays.
    call.reinvite("sendonly", "recvonly").await;
    let bye = tokio::time::timeout(Duration::from_secs(3), call.phone.next_request("BYE")).await;
    assert!(
        !matches!(bye, Ok(Ok(_))),
        "a held call was hung up: {bye:?}"
    );

    // Resume: audio flows both ways again.
    call.reinvite("sendrecv", "sendrecv").await;
    let (a, b) = exchange(&call, 25).await;
    assert!(a >= 24 && b >= 24, "after resume: {a} and {b} of 25");
    call.hang_up().await;
    let events = events_of(&sb, &call.call_id, "call.ended").await;
    assert_eq!(find(&events, "call.ended")["cause"], "normal");
}

#[tokio::test]
async fn a_manager_set_not_to_be_recorded_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start_with(dir.path(), "60s", "record = false").await;
    let mut call = establish(&sb, "media-private-1").await;
    let (a, b) = exchange(&call, 25).await;
    assert!(a >= 24 && b >= 24, "audio still flows: {a} and {b} of 25");
    call.hang_up().await;
    let events = events_of(&sb, &call.call_id, "call.ended").await;
    assert!(find(&events, "call.ended").get("recording").is_none());
    // Nothing was written, and no recording.ready follows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = events_of(&sb, &call.call_id, "call.ended").await;
    assert!(
        events.iter().all(|e| e["kind"] != "recording.ready"),
        "{events:#?}"
    );
    assert!(!dir.path().join("data/recordings").exists());
}
