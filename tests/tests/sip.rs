//! SIP end to end against the running daemon: the RFC 4475/5118 torture
//! corpus over UDP, SIPp registering with digest auth, the registrar's
//! rules over UDP and TCP, abuse resistance, and users reloaded on SIGHUP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use switchboard_sip::message::{param_value, parse};
use switchboard_tests::sip::{SipClient, authorization, contact_expiries, peers_dir};
use switchboard_tests::{Launch, Switchboard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

const USERS: &str = r#"
[sip]
algorithms = ["MD5", "SHA-256"]

[[sip.users]]
extension = "1001"
password = "demo1001"

[[sip.users]]
extension = "watson"
password = "torture1"

[[sip.users]]
extension = "user"
password = "torture2"
"#;

async fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Switchboard {
    let file = dir.join("switchboard.toml");
    std::fs::write(&file, config).unwrap();
    let mut launch = Launch::new(&dir.join("data"))
        .config(&file)
        .command("gateway");
    for (k, v) in env {
        launch = launch.env(k, *v);
    }
    launch.start().await.unwrap()
}

fn torture_file(file: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/sip/tests/torture")
        .join(file);
    let bytes = std::fs::read(path).unwrap();
    if !file.starts_with("rfc5118/") {
        return bytes;
    }
    // RFC 5118's archive has bare LF endings (SOURCES.md, discrepancy 4).
    let mut out = Vec::new();
    for b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// What the daemon must do with each corpus file, from MANIFEST.tsv's
/// expected outcome for a registrar/B2BUA endpoint.
fn expected(file: &str) -> Option<u16> {
    Some(match file {
        // Valid requests, processed: INVITEs need proxy authentication,
        // REGISTERs a challenge, OPTIONS are answered, unknown methods 501.
        "rfc4475/esc01.dat" | "rfc4475/longreq.dat" | "rfc4475/inv2543.dat" => 407,
        // Its To has a tag: a re-INVITE in a dialog that does not exist.
        "rfc4475/wsinv.dat" => 481,
        "rfc4475/intmeth.dat" | "rfc4475/esc02.dat" => 501,
        "rfc4475/escnull.dat" | "rfc4475/dblreq.dat" => 401,
        "rfc4475/lwsdisp.dat" | "rfc4475/semiuri.dat" | "rfc4475/transports.dat" => 200,
        // A well-formed MESSAGE, a method we do not implement.
        "rfc4475/mpart01.dat" => 501,
        // Responses matching no transaction are dropped, valid or not.
        "rfc4475/unreason.dat"
        | "rfc4475/noreason.dat"
        | "rfc4475/scalarlg.dat"
        | "rfc4475/bigcode.dat"
        | "rfc4475/bcast.dat" => return None,
        "rfc4475/badvers.dat" => 505,
        "rfc4475/mismatch02.dat" => 501,
        "rfc4475/badbranch.dat"
        | "rfc4475/insuf.dat"
        | "rfc4475/unksm2.dat"
        | "rfc4475/multi01.dat"
        | "rfc4475/mcl01.dat" => 400,
        "rfc4475/unkscm.dat" | "rfc4475/novelsc.dat" => 416,
        "rfc4475/bext01.dat" => 420,
        "rfc4475/invut.dat" => 415,
        "rfc4475/regaut01.dat" => 401,
        "rfc4475/zeromf.dat" => 200,
        "rfc4475/cparam01.dat" | "rfc4475/cparam02.dat" | "rfc4475/regescrt.dat" => 401,
        "rfc4475/sdp01.dat" => 406,
        "rfc5118/ipv6-good" | "rfc5118/port-ambiguous" | "rfc5118/port-unambiguous" => 401,
        "rfc5118/ipv6-bad" => 400,
        "rfc5118/via-received-param-with-delim" | "rfc5118/mult-ip-in-header" => 481,
        "rfc5118/via-received-param-no-delim"
        | "rfc5118/ipv6-bug-abnf-3-colons"
        | "rfc5118/ipv6-correct-abnf-2-colons" => 200,
        // Declares 17 octets more body than it carries: RFC 4475 §3.1.2.2.
        "rfc5118/ipv6-in-sdp" => 400,
        "rfc5118/mult-ip-in-sdp" | "rfc5118/ipv4-mapped-ipv6" => 407,
        // Every other invalid-400 file of RFC 4475 §3.1.2.
        f if f.starts_with("rfc4475/") => 400,
        other => panic!("{other} has no expectation"),
    })
}

#[tokio::test]
async fn torture_corpus_over_udp_gets_the_answers_the_rfcs_expect() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), USERS, &[]).await;
    let client = SipClient::bind(LOCAL, sb.sip_udp.unwrap()).await.unwrap();
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/sip/tests/torture/MANIFEST.tsv"),
    )
    .unwrap();
    let mut checked = 0;
    for line in manifest.lines().skip(1) {
        let file = line.split('\t').next().unwrap();
        let bytes = torture_file(file);
        let want = expected(file);
        let wait = if want.is_some() {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(300)
        };
        let reply = client.exchange(&bytes, wait).await.unwrap();
        assert_eq!(
            reply.as_ref().and_then(|r| r.status()),
            want,
            "{file}: {reply:?}"
        );
        if let Some(reply) = &reply {
            // Answers copy the request's identifiers.
            let req = parse(&bytes).unwrap();
            assert_eq!(reply.call_id(), req.call_id(), "{file}");
            if want == Some(420) {
                assert_eq!(
                    reply.header("unsupported"),
                    Some(
                        "nothingSupportsThis, nothingSupportsThisEither, noProxiesSupportThis, norDoAnyProxiesSupportThis"
                    ),
                    "{file}"
                );
            }
            if want == Some(501) {
                assert!(
                    reply.header("allow").is_some_and(|a| a.contains("INVITE")),
                    "{file}"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 61);

    // The same file with its Content-Length fixed is processed.
    let fixed = String::from_utf8(torture_file("rfc5118/ipv6-in-sdp"))
        .unwrap()
        .replace("Content-Length: 268", "Content-Length: 251");
    let reply = client
        .exchange(fixed.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status(), Some(407));

    // RFC 4475 §3.3.12-14: with credentials the registrations succeed and
    // contact parameters stay where the message put them.
    for (file, user, password, want_in_uri, unwanted_in_uri) in [
        (
            "rfc4475/cparam01.dat",
            "watson",
            "torture1",
            "sip:+19725552222@gw1.example.net",
            Some("unknownparam"),
        ),
        (
            "rfc4475/cparam02.dat",
            "watson",
            "torture1",
            "sip:+19725552222@gw1.example.net;unknownparam",
            None,
        ),
        (
            "rfc4475/regescrt.dat",
            "user",
            "torture2",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            None,
        ),
    ] {
        let bytes = torture_file(file);
        let challenge = client
            .exchange(&bytes, Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap();
        let auth = authorization(
            &challenge,
            "www-authenticate",
            "REGISTER",
            "sip:example.com",
            user,
            password,
        )
        .unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let (head, _) = text.split_once("\r\n\r\n").unwrap();
        let with_auth = format!("{head}\r\nAuthorization: {auth}\r\n\r\n");
        let ok = client
            .exchange(with_auth.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ok.status(), Some(200), "{file}: {ok:?}");
        let uris: Vec<String> = contact_expiries(&ok).into_iter().map(|(u, _)| u).collect();
        assert!(uris.iter().any(|u| u == want_in_uri), "{file}: {uris:?}");
        if let Some(bad) = unwanted_in_uri {
            assert!(
                uris.iter().all(|u| !u.contains(bad)),
                "{file}: {bad} is a contact parameter, not a URI one: {uris:?}"
            );
        }
    }
    // The daemon is still there and counted what it dropped.
    assert!(
        sb.gateway_metric(
            "switchboard_sip_dropped_total",
            &[("reason", "stray_response")]
        )
        .await
        .unwrap()
            >= 3.0
    );
    assert!(
        sb.gateway_metric(
            "switchboard_sip_responses_total",
            &[("class", "4xx"), ("method", "INVITE")]
        )
        .await
        .unwrap()
            >= 5.0
    );
}

#[tokio::test]
async fn sipp_registers_users_with_digest_auth() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from(
        "[sip]\nalgorithms = [\"MD5\", \"SHA-256\"]\n[sip.security]\nrequests_per_second = 0\n",
    );
    for i in 1..=50 {
        config.push_str(&format!(
            "[[sip.users]]\nextension = \"user{i:05}\"\npassword = \"secret\"\n"
        ));
    }
    let sb = start(dir.path(), &config, &[]).await;
    let users = dir.path().join("users.csv");
    let out = std::process::Command::new("sh")
        .arg(peers_dir().join("sipp/make-users.sh"))
        .args(["50", "secret"])
        .output()
        .unwrap();
    std::fs::write(&users, out.stdout).unwrap();
    let status = tokio::process::Command::new("sipp")
        .arg(sb.sip_udp.unwrap().to_string())
        .arg("-sf")
        .arg(peers_dir().join("sipp/register_auth.xml"))
        .arg("-inf")
        .arg(&users)
        .args(["-i", "127.0.0.1", "-ci", "127.0.0.1", "-cp"])
        .arg(switchboard_tests::free_port().unwrap().to_string())
        .args([
            "-r",
            "50",
            "-m",
            "50",
            "-nostdin",
            "-timeout",
            "20s",
            "-timeout_error",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(
        status.success(),
        "sipp failed: {status}; log:\n{}",
        sb.logs()
    );
    assert_eq!(
        sb.gateway_metric("switchboard_sip_registrations", &[])
            .await
            .unwrap(),
        50.0
    );
}

#[tokio::test]
async fn registrar_rules_over_udp_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), USERS, &[]).await;
    let mut a = SipClient::bind(LOCAL, sb.sip_udp.unwrap()).await.unwrap();

    // Two contacts with their own expiry, and the registration is kept.
    let ok = a
        .register("1001", "demo1001", "Contact: <sip:1001@10.0.0.1:5060>;expires=120, <sip:1001@10.0.0.2>\r\nExpires: 300\r\n")
        .await
        .unwrap();
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let mut c = contact_expiries(&ok);
    c.sort();
    assert_eq!(
        c,
        [
            ("sip:1001@10.0.0.1:5060".to_owned(), 120),
            ("sip:1001@10.0.0.2".to_owned(), 300)
        ]
    );
    // rport (RFC 3581): the reply says where the request came from.
    let via = ok.header("via").unwrap();
    assert_eq!(
        param_value(via, "rport"),
        Some(a.local().port().to_string().as_str())
    );
    assert_eq!(param_value(via, "received"), Some("127.0.0.1"));

    // Too brief: 423 with Min-Expires.
    let brief = a
        .register(
            "1001",
            "demo1001",
            "Contact: <sip:1001@10.0.0.3>\r\nExpires: 5\r\n",
        )
        .await
        .unwrap();
    assert_eq!(brief.status(), Some(423));
    assert_eq!(brief.header("min-expires"), Some("60"));

    // Authenticated as 1001 but registering someone else's AOR: 403.
    let uri = format!("sip:{}", a.server);
    let req = a.request(
        "REGISTER",
        &uri,
        "watson",
        "cross-1",
        1,
        "Contact: <sip:watson@10.0.0.9>\r\n",
    );
    let challenge = a
        .exchange(req.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    let auth = authorization(
        &challenge,
        "www-authenticate",
        "REGISTER",
        &uri,
        "1001",
        "demo1001",
    )
    .unwrap();
    let req = a.request(
        "REGISTER",
        &uri,
        "watson",
        "cross-1",
        2,
        &format!("Contact: <sip:watson@10.0.0.9>\r\nAuthorization: {auth}\r\n"),
    );
    assert_eq!(
        a.exchange(req.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap()
            .status(),
        Some(403)
    );

    // A replayed request (same nonce and count, another transaction) is
    // challenged again, not accepted.
    let req = a.request(
        "REGISTER",
        &uri,
        "1001",
        "replay-1",
        1,
        "Contact: <sip:1001@10.0.0.5>\r\n",
    );
    let challenge = a
        .exchange(req.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    let auth = authorization(
        &challenge,
        "www-authenticate",
        "REGISTER",
        &uri,
        "1001",
        "demo1001",
    )
    .unwrap();
    let extra = format!("Contact: <sip:1001@10.0.0.5>\r\nAuthorization: {auth}\r\n");
    let first = a.request("REGISTER", &uri, "1001", "replay-1", 2, &extra);
    assert_eq!(
        a.exchange(first.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap()
            .status(),
        Some(200)
    );
    // A retransmission of the same request is answered the same way.
    assert_eq!(
        a.exchange(first.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap()
            .status(),
        Some(200)
    );
    let replay = a.request("REGISTER", &uri, "1001", "replay-1", 3, &extra);
    assert_eq!(
        a.exchange(replay.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap()
            .status(),
        Some(401)
    );

    // Contact: * with Expires: 0 removes every binding.
    // (A later CSeq of the same Call-ID: an equal one would be out of order.)
    let call_id = format!("reg-1001-{}", a.local().port());
    let gone = a
        .register_in(
            "1001",
            "demo1001",
            &call_id,
            10,
            "Contact: *\r\nExpires: 0\r\n",
        )
        .await
        .unwrap();
    assert_eq!(gone.status(), Some(200));
    assert!(contact_expiries(&gone).is_empty(), "{gone:?}");
    assert_eq!(
        sb.gateway_metric("switchboard_sip_registrations", &[])
            .await
            .unwrap(),
        0.0
    );

    // Over TCP: a keep-alive is answered, a REGISTER challenged, and a
    // stream claiming a huge body is closed without waiting for it.
    let tcp_addr = sb.sip_tcp.unwrap();
    let mut stream = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    stream.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    let local = stream.local_addr().unwrap();
    let req = format!(
        "REGISTER sip:{tcp_addr} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcp1\r\nFrom: <sip:1001@x>;tag=1\r\n\
To: <sip:1001@x>\r\nCall-ID: tcp-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:1001@{local};transport=tcp>\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"SIP/2.0 401 "),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    stream
        .write_all(b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK-big\r\nContent-Length: 4000000000\r\n\r\n")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "the connection should be closed: {closed:?}"
    );
}

#[tokio::test]
async fn abuse_no_enumeration_bans_per_source_scanners_and_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(
        dir.path(),
        USERS,
        &[("SWITCHBOARD_SIP__SECURITY__REQUESTS_PER_SECOND", "20")],
    )
    .await;
    let server = sb.sip_udp.unwrap();
    let mut attacker = SipClient::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), server)
        .await
        .unwrap();
    let mut bystander = SipClient::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), server)
        .await
        .unwrap();

    // A known user with a wrong password and an unknown user get the same
    // answer (apart from the nonce and tags).
    let known = attacker
        .register("1001", "wrong-password", "Contact: <sip:1001@10.9.9.9>\r\n")
        .await
        .unwrap();
    let unknown = attacker
        .register("9999", "whatever", "Contact: <sip:9999@10.9.9.9>\r\n")
        .await
        .unwrap();
    let shape = |m: &switchboard_sip::Message| {
        let mut names: Vec<String> = m.headers.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        let challenge = m
            .header("www-authenticate")
            .unwrap_or("")
            .split("nonce=")
            .next()
            .unwrap_or("")
            .to_owned();
        (m.status(), names, challenge)
    };
    assert_eq!(known.status(), Some(401));
    assert_eq!(shape(&known), shape(&unknown));

    // Ten failures ban the source; the bystander is unaffected.
    for _ in 0..8 {
        let r = attacker
            .register("1001", "wrong-password", "Contact: <sip:1001@10.9.9.9>\r\n")
            .await
            .unwrap();
        assert_eq!(r.status(), Some(401));
    }
    let options =
        |c: &mut SipClient| c.request("OPTIONS", &format!("sip:{server}"), "probe", "opt", 1, "");
    let probe = options(&mut attacker);
    assert!(
        attacker
            .exchange(probe.as_bytes(), Duration::from_millis(500))
            .await
            .unwrap()
            .is_none(),
        "banned"
    );
    let probe = options(&mut bystander);
    assert_eq!(
        bystander
            .exchange(probe.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap()
            .status(),
        Some(200)
    );
    assert_eq!(
        sb.gateway_metric("switchboard_sip_bans_total", &[])
            .await
            .unwrap(),
        1.0
    );
    assert!(
        sb.gateway_metric(
            "switchboard_sip_auth_failures_total",
            &[("reason", "wrong password")]
        )
        .await
        .unwrap()
            >= 9.0
    );

    // A scanner's user agent gets no answer at all.
    let mut scanner = SipClient::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)), server)
        .await
        .unwrap();
    let scan = scanner.request(
        "OPTIONS",
        &format!("sip:100@{server}"),
        "100",
        "scan",
        1,
        "User-Agent: friendly-scanner\r\n",
    );
    assert!(
        scanner
            .exchange(scan.as_bytes(), Duration::from_millis(500))
            .await
            .unwrap()
            .is_none()
    );

    // 20 requests/s per source, bursts of 40: a flood of 100 is cut short,
    // another source is still served.
    let mut flooder = SipClient::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), server)
        .await
        .unwrap();
    for _ in 0..100 {
        let probe = options(&mut flooder);
        flooder.send(probe.as_bytes()).await.unwrap();
    }
    let mut answered = 0;
    while flooder
        .recv(Duration::from_millis(300))
        .await
        .unwrap()
        .is_some()
    {
        answered += 1;
    }
    assert!((40..=43).contains(&answered), "{answered} of 100 answered");
    let probe = options(&mut bystander);
    assert_eq!(
        bystander
            .exchange(probe.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap()
            .status(),
        Some(200)
    );
    assert!(
        sb.gateway_metric(
            "switchboard_sip_dropped_total",
            &[("reason", "rate_limited")]
        )
        .await
        .unwrap()
            >= 40.0
    );
}

#[tokio::test]
async fn sighup_reloads_users_and_keeps_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let sb = start(dir.path(), USERS, &[]).await;
    let mut a = SipClient::bind(LOCAL, sb.sip_udp.unwrap()).await.unwrap();
    assert_eq!(
        a.register("1001", "demo1001", "Contact: <sip:1001@10.0.0.1>\r\n")
            .await
            .unwrap()
            .status(),
        Some(200)
    );
    assert_eq!(
        a.register("1002", "demo1002", "Contact: <sip:1002@10.0.0.2>\r\n")
            .await
            .unwrap()
            .status(),
        Some(401)
    );

    let added = format!("{USERS}\n[[sip.users]]\nextension = \"1002\"\npassword = \"demo1002\"\n");
    std::fs::write(dir.path().join("switchboard.toml"), added).unwrap();
    sb.hangup().unwrap();
    sb.wait_for_log("SIP users reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        a.register("1002", "demo1002", "Contact: <sip:1002@10.0.0.2>\r\n")
            .await
            .unwrap()
            .status(),
        Some(200)
    );
    // 1001's binding is still there: a query (no Contact) lists it.
    let fetch = a.register("1001", "demo1001", "").await.unwrap();
    assert_eq!(contact_expiries(&fetch).len(), 1, "{fetch:?}");
    assert_eq!(
        sb.gateway_metric("switchboard_sip_registrations", &[])
            .await
            .unwrap(),
        2.0
    );

    // A broken file keeps the old users.
    std::fs::write(dir.path().join("switchboard.toml"), "[sip]\nrealm = 5\n").unwrap();
    sb.hangup().unwrap();
    sb.wait_for_log("configuration not reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        a.register("1002", "demo1002", "Contact: <sip:1002@10.0.0.2>\r\n")
            .await
            .unwrap()
            .status(),
        Some(200)
    );
}

/// Two gateway nodes sharing the location service in Redis: a phone
/// registered through one is known to the other.
#[tokio::test]
async fn bindings_in_redis_are_shared_by_gateway_nodes() {
    let redis =
        std::env::var("SWITCHBOARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("sbtest:{}:", uuid::Uuid::new_v4().simple());
    let env = [
        ("SWITCHBOARD_SIP__LOCATION", "redis"),
        ("SWITCHBOARD_SIP__REDIS_URL", redis.as_str()),
        ("SWITCHBOARD_SIP__REDIS_PREFIX", prefix.as_str()),
        // One nonce secret: a nonce issued by A is genuine at B too.
        ("SWITCHBOARD_SIP__NONCE_SECRET", "shared by both nodes"),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(dir_a.path(), USERS, &env).await;
    let b = start(dir_b.path(), USERS, &env).await;
    let mut phone = SipClient::bind(LOCAL, a.sip_udp.unwrap()).await.unwrap();
    let ok = phone
        .register("1001", "demo1001", "Contact: <sip:1001@10.1.1.1:5060>\r\n")
        .await
        .unwrap();
    assert_eq!(ok.status(), Some(200));

    let mut other = SipClient::bind(LOCAL, b.sip_udp.unwrap()).await.unwrap();
    let fetch = other.register("1001", "demo1001", "").await.unwrap();
    let listed = contact_expiries(&fetch);
    assert_eq!(listed.len(), 1, "{fetch:?}");
    assert_eq!(listed[0].0, "sip:1001@10.1.1.1:5060");
    assert!((3590..=3600).contains(&listed[0].1), "{listed:?}");
    // Removing it through B removes it for A too.
    let gone = other
        .register_in(
            "1001",
            "demo1001",
            "other-1",
            5,
            "Contact: <sip:1001@10.1.1.1:5060>;expires=0\r\n",
        )
        .await
        .unwrap();
    assert!(contact_expiries(&gone).is_empty(), "{gone:?}");
    let fetch = phone
        .register_in("1001", "demo1001", "again-1", 1, "")
        .await
        .unwrap();
    assert!(contact_expiries(&fetch).is_empty(), "{fetch:?}");

    // A signed REGISTER accepted by A, captured and replayed at B: B has
    // not seen that nonce's counts, so it challenges (stale) instead of
    // obeying. Replayed at A with a new branch, it is a replay.
    let (signed, ok) = phone
        .register_signed(
            "1001",
            "demo1001",
            "replay-1",
            1,
            "Contact: <sip:1001@10.2.2.2>\r\n",
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let thief = SipClient::bind(LOCAL, b.sip_udp.unwrap()).await.unwrap();
    let at_b = thief
        .exchange(signed.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_b.status(), Some(401), "{at_b:?}");
    assert!(
        at_b.header("www-authenticate")
            .unwrap()
            .contains("stale=true"),
        "{at_b:?}"
    );
    let rebranched = signed.replace("branch=z9hG4bK-t", "branch=z9hG4bK-replayed-t");
    let thief_a = SipClient::bind(LOCAL, a.sip_udp.unwrap()).await.unwrap();
    let at_a = thief_a
        .exchange(rebranched.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_a.status(), Some(401), "{at_a:?}");
}

/// `openssl s_client` sends a REGISTER over TLS with the given protocol
/// flags; returns what came back (empty when the handshake failed).
async fn over_tls(addr: std::net::SocketAddr, flags: &[&str], request: &str) -> String {
    let mut child = tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl (Debian package openssl)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request.as_bytes()).await.unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stdout.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    drop(stdin);
    let _ = child.kill().await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn sip_over_tls_1_2_and_1_3_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let sb = start(
        dir.path(),
        USERS,
        &[
            ("SWITCHBOARD_SIP__TLS_CERT_FILE", cert.to_str().unwrap()),
            ("SWITCHBOARD_SIP__TLS_KEY_FILE", key.to_str().unwrap()),
        ],
    )
    .await;
    let addr = sb.sip_tls.expect("a TLS listener");
    let register = "REGISTER sip:switchboard SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-tls1\r\n\
From: <sip:1001@switchboard>;tag=1\r\nTo: <sip:1001@switchboard>\r\nCall-ID: tls-1\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:1001@127.0.0.1:5999;transport=tls>\r\nContent-Length: 0\r\n\r\n";
    for version in ["-tls1_2", "-tls1_3"] {
        let reply = over_tls(addr, &[version], register).await;
        assert!(reply.starts_with("SIP/2.0 401 "), "{version}: {reply:?}");
    }
    // The client allows TLS 1.1 (security level 0); the server refuses it.
    let old = over_tls(
        addr,
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
        register,
    )
    .await;
    assert!(old.is_empty(), "TLS 1.1 must not be accepted: {old:?}");
    assert!(
        sb.gateway_metric(
            "switchboard_sip_dropped_total",
            &[("reason", "tls_handshake")]
        )
        .await
        .unwrap()
            >= 1.0
    );
}
