//! SDP (RFC 4566) as far as the relay needs it: where a side wants its
//! audio, which codecs it offers, whether it is on hold; and the same SDP
//! rewritten so the other side sends to us. Sans-IO.

use std::fmt::Write as _;
use std::net::IpAddr;

/// One payload type of the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub pt: u8,
    /// Upper-case encoding name: "PCMU", "PCMA", "TELEPHONE-EVENT".
    pub name: String,
}

/// The first audio stream of an SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// Where this side receives RTP; `None` for `0.0.0.0` (RFC 2543 hold).
    pub addr: Option<IpAddr>,
    pub rtp_port: u16,
    pub rtcp_port: u16,
    pub payloads: Vec<Payload>,
    /// `sendonly`, `recvonly` or `inactive` (or the old 0.0.0.0 hold).
    pub on_hold: bool,
}

impl Audio {
    /// The name of a payload type this stream declared.
    pub fn codec(&self, pt: u8) -> Option<&str> {
        self.payloads
            .iter()
            .find(|p| p.pt == pt)
            .map(|p| p.name.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("malformed SDP: {0}")]
    Malformed(&'static str),
    #[error("no audio stream in the SDP")]
    NoAudio,
    #[error("no codec in common")]
    NoCommonCodec,
}

fn static_name(pt: u8) -> Option<&'static str> {
    match pt {
        0 => Some("PCMU"),
        8 => Some("PCMA"),
        9 => Some("G722"),
        13 => Some("CN"),
        18 => Some("G729"),
        _ => None,
    }
}

fn lines(sdp: &[u8]) -> Result<Vec<&str>, SdpError> {
    let text = std::str::from_utf8(sdp).map_err(|_| SdpError::Malformed("not UTF-8"))?;
    Ok(text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect())
}

/// `c=IN IP4 <addr>` → the address (`None` for 0.0.0.0).
fn connection(line: &str) -> Result<Option<IpAddr>, SdpError> {
    let mut parts = line[2..].split_ascii_whitespace();
    let (Some("IN"), Some(_), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SdpError::Malformed("c= line"));
    };
    // A multicast TTL ("/127") is not ours to handle; drop it.
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| SdpError::Malformed("c= address is not an IP address"))?;
    Ok((!ip.is_unspecified()).then_some(ip))
}

/// Reads the first audio stream.
pub fn parse(sdp: &[u8]) -> Result<Audio, SdpError> {
    let lines = lines(sdp)?;
    if !lines.first().is_some_and(|l| l.starts_with("v=")) {
        return Err(SdpError::Malformed("does not start with v="));
    }
    let mut session_addr = None;
    let mut session_hold = false;
    let mut audio: Option<Audio> = None;
    let mut media_addr: Option<Option<IpAddr>> = None;
    let mut in_audio = false;
    let mut seen_audio = false;
    for line in lines {
        if line.len() < 2 || line.as_bytes()[1] != b'=' {
            return Err(SdpError::Malformed("a line is not <type>=<value>"));
        }
        let value = &line[2..];
        match line.as_bytes()[0] {
            b'm' => {
                in_audio = false;
                if seen_audio {
                    continue;
                }
                let mut parts = value.split_ascii_whitespace();
                let (Some(kind), Some(port), Some(proto)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(SdpError::Malformed("m= line"));
                };
                if kind != "audio" {
                    continue;
                }
                seen_audio = true;
                in_audio = true;
                let port: u16 = port
                    .split('/')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or(SdpError::Malformed("m= port"))?;
                if !proto.starts_with("RTP/AVP") {
                    // SRTP (RTP/SAVP) and the rest cannot be relayed in clear
                    // or recorded.
                    in_audio = false;
                    continue;
                }
                let mut payloads = Vec::new();
                for pt in parts {
                    let pt: u8 = pt
                        .parse()
                        .map_err(|_| SdpError::Malformed("m= payload type"))?;
                    payloads.push(Payload {
                        pt,
                        name: static_name(pt).unwrap_or("").to_owned(),
                    });
                }
                audio = Some(Audio {
                    addr: None,
                    rtp_port: port,
                    rtcp_port: port.saturating_add(1),
                    payloads,
                    on_hold: false,
                });
            }
            b'c' => {
                let addr = connection(line)?;
                if in_audio {
                    media_addr = Some(addr);
                } else if !seen_audio {
                    session_addr = Some(addr);
                }
            }
            b'a' if in_audio || !seen_audio => {
                let Some(a) = audio.as_mut().filter(|_| in_audio) else {
                    if matches!(value, "sendonly" | "recvonly" | "inactive") {
                        session_hold = true;
                    }
                    continue;
                };
                if let Some(map) = value.strip_prefix("rtpmap:") {
                    let (pt, enc) = map.split_once(' ').ok_or(SdpError::Malformed("a=rtpmap"))?;
                    let pt: u8 = pt.parse().map_err(|_| SdpError::Malformed("a=rtpmap"))?;
                    let name = enc.split('/').next().unwrap_or("").to_ascii_uppercase();
                    if let Some(p) = a.payloads.iter_mut().find(|p| p.pt == pt) {
                        p.name = name;
                    }
                } else if let Some(rtcp) = value.strip_prefix("rtcp:") {
                    a.rtcp_port = rtcp
                        .split_ascii_whitespace()
                        .next()
                        .and_then(|p| p.parse().ok())
                        .ok_or(SdpError::Malformed("a=rtcp"))?;
                } else if matches!(value, "sendonly" | "recvonly" | "inactive") {
                    a.on_hold = true;
                }
            }
            _ => {}
        }
    }
    let mut audio = audio.ok_or(SdpError::NoAudio)?;
    audio.addr = match media_addr {
        Some(addr) => addr,
        None => session_addr.ok_or(SdpError::Malformed("no c= line for the audio stream"))?,
    };
    audio.on_hold |= session_hold || audio.addr.is_none();
    Ok(audio)
}

/// The SDP with our address and port for its audio stream, its codecs cut
/// to `keep` (encoding names; telephone-event always stays) when given,
/// and every other stream refused (port 0). ICE attributes are dropped:
/// the relay is the only candidate. A hold (0.0.0.0) stays a hold.
pub fn rewrite(
    sdp: &[u8],
    ours: IpAddr,
    port: u16,
    keep: Option<&[String]>,
) -> Result<(Vec<u8>, Audio), SdpError> {
    let mut audio = parse(sdp)?;
    if let Some(keep) = keep {
        audio.payloads.retain(|p| {
            p.name == "TELEPHONE-EVENT" || keep.iter().any(|k| k.eq_ignore_ascii_case(&p.name))
        });
        if !audio.payloads.iter().any(|p| p.name != "TELEPHONE-EVENT") {
            return Err(SdpError::NoCommonCodec);
        }
    }
    let family = if ours.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(sdp.len() + 32);
    let mut in_audio = false;
    let mut audio_done = false;
    for line in lines(sdp)? {
        let value = &line[2..];
        match line.as_bytes()[0] {
            b'o' => {
                // Keep the originator's session id and version; our address.
                let parts: Vec<&str> = value.split_ascii_whitespace().collect();
                if parts.len() >= 6 {
                    let _ = write!(
                        out,
                        "o={} {} {} IN {family} {ours}\r\n",
                        parts[0], parts[1], parts[2]
                    );
                } else {
                    let _ = write!(out, "{line}\r\n");
                }
            }
            b'c' => {
                let addr = connection(line)?;
                match addr {
                    Some(_) => {
                        let _ = write!(out, "c=IN {family} {ours}\r\n");
                    }
                    None => {
                        let _ = write!(out, "c=IN {family} 0.0.0.0\r\n");
                    }
                }
            }
            b'm' => {
                in_audio = false;
                let mut parts = value.split_ascii_whitespace();
                let kind = parts.next().unwrap_or("");
                let _ = parts.next();
                let proto = parts.next().unwrap_or("RTP/AVP");
                if kind == "audio" && !audio_done && proto.starts_with("RTP/AVP") {
                    audio_done = true;
                    in_audio = true;
                    let _ = write!(out, "m=audio {port} {proto}");
                    for p in &audio.payloads {
                        let _ = write!(out, " {}", p.pt);
                    }
                    out.push_str("\r\n");
                } else {
                    let rest: Vec<&str> = parts.collect();
                    let _ = write!(out, "m={kind} 0 {proto} {}\r\n", rest.join(" "));
                }
            }
            b'a' => {
                if value.starts_with("candidate:")
                    || value.starts_with("ice-")
                    || value == "end-of-candidates"
                    || value == "rtcp-mux"
                {
                    continue;
                }
                if in_audio {
                    if let Some(rest) = value.strip_prefix("rtcp:") {
                        let _ = rest;
                        let _ = write!(out, "a=rtcp:{} IN {family} {ours}\r\n", port + 1);
                        continue;
                    }
                    // Attributes of payload types we cut go with them.
                    let pt_attr = ["rtpmap:", "fmtp:", "rtcp-fb:"]
                        .iter()
                        .find_map(|p| value.strip_prefix(p))
                        .and_then(|r| r.split([' ', ':']).next())
                        .and_then(|pt| pt.parse::<u8>().ok());
                    if let Some(pt) = pt_attr
                        && !audio.payloads.iter().any(|p| p.pt == pt)
                    {
                        continue;
                    }
                }
                let _ = write!(out, "{line}\r\n");
            }
            _ => {
                let _ = write!(out, "{line}\r\n");
            }
        }
    }
    if !audio_done {
        return Err(SdpError::NoAudio);
    }
    Ok((out.into_bytes(), audio))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.1\r\ns=-\r\n\
c=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 18 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\na=sendrecv\r\nm=video 51372 RTP/AVP 99\r\na=rtpmap:99 h264/90000\r\n";

    #[test]
    fn reads_where_a_side_wants_audio_and_what_it_offers() {
        let a = parse(OFFER.as_bytes()).unwrap();
        assert_eq!(a.addr, Some("192.0.2.1".parse().unwrap()));
        assert_eq!((a.rtp_port, a.rtcp_port), (49170, 49171));
        let names: Vec<&str> = a.payloads.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["PCMU", "PCMA", "G729", "TELEPHONE-EVENT"]);
        assert!(!a.on_hold);
    }

    #[test]
    fn rewrite_points_at_us_and_keeps_only_common_codecs() {
        let keep = ["PCMA".to_owned(), "PCMU".to_owned()];
        let ours: IpAddr = "198.51.100.7".parse().unwrap();
        let (sdp, audio) = rewrite(OFFER.as_bytes(), ours, 10_000, Some(&keep)).unwrap();
        let text = String::from_utf8(sdp.clone()).unwrap();
        assert!(text.contains("o=alice 2890844526 2890844526 IN IP4 198.51.100.7\r\n"));
        assert!(text.contains("c=IN IP4 198.51.100.7\r\n"));
        assert!(text.contains("m=audio 10000 RTP/AVP 0 8 101\r\n"), "{text}");
        assert!(!text.contains("G729") && !text.contains("annexb"), "{text}");
        assert!(text.contains("a=fmtp:101 0-15\r\n"));
        assert!(text.contains("m=video 0 RTP/AVP 99\r\n"), "{text}");
        assert_eq!(audio.payloads.len(), 3);
        let again = parse(&sdp).unwrap();
        assert_eq!(again.addr, Some(ours));
        assert_eq!(again.rtp_port, 10_000);
    }

    #[test]
    fn nothing_in_common_is_an_error_telephone_event_alone_does_not_count() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 18 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        let keep = ["PCMU".to_owned()];
        assert_eq!(
            rewrite(
                sdp.as_bytes(),
                "127.0.0.1".parse().unwrap(),
                10_000,
                Some(&keep)
            )
            .unwrap_err(),
            SdpError::NoCommonCodec
        );
    }

    #[test]
    fn hold_is_seen_and_kept() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\n";
        let a = parse(sdp.as_bytes()).unwrap();
        assert!(a.on_hold && a.addr.is_none());
        let (out, _) = rewrite(sdp.as_bytes(), "127.0.0.1".parse().unwrap(), 10_002, None).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("c=IN IP4 0.0.0.0\r\n")
        );
        let sendonly = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n";
        assert!(parse(sendonly.as_bytes()).unwrap().on_hold);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bad in [
            "",
            "x",
            "v=0\r\nm=audio",
            "v=0\r\nc=IN IP4 nope\r\nm=audio 1 RTP/AVP 0\r\n",
            "v=0\r\nm=audio 99999 RTP/AVP 0\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let no_audio = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=video 5000 RTP/AVP 99\r\n";
        assert_eq!(parse(no_audio.as_bytes()).unwrap_err(), SdpError::NoAudio);
    }
}
