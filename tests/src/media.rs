//! Media helpers for the tests and benchmarks: RTP packets, SDP, G.711
//! tones, pcap files, and what a recording holds.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// An RTP packet (RFC 3550, no CSRC or extension).
pub fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(pt | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The SSRC of an RTP packet.
pub fn ssrc_of(pkt: &[u8]) -> Option<u32> {
    pkt.get(8..12)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// An SDP offer or answer for audio at `addr` with `payloads` (e.g.
/// "0 101"); rtpmaps for PCMU, PCMA, G729 and telephone-event.
pub fn sdp(addr: SocketAddr, payloads: &str) -> String {
    let mut s = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {payloads}\r\n",
        ip = addr.ip(),
        port = addr.port()
    );
    for pt in payloads.split_whitespace() {
        let map = match pt {
            "0" => "0 PCMU/8000",
            "8" => "8 PCMA/8000",
            "18" => "18 G729/8000",
            "101" => "101 telephone-event/8000",
            _ => continue,
        };
        s.push_str(&format!("a=rtpmap:{map}\r\n"));
    }
    s.push_str("a=sendrecv\r\n");
    s
}

/// Where an SDP body wants its audio: `c=` address and `m=audio` port.
pub fn sdp_audio(body: &[u8]) -> Result<SocketAddr> {
    let text = std::str::from_utf8(body)?;
    let ip = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))
        .context("no c= line")?;
    let port = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|m| m.split_whitespace().next())
        .context("no m=audio line")?;
    Ok(SocketAddr::new(ip.trim().parse()?, port.parse()?))
}

/// μ-law of a linear sample (G.711).
pub fn ulaw(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(32_635) + 0x84;
    let mut exponent = 7;
    while exponent > 0 && s & (0x4000 >> (7 - exponent)) == 0 {
        exponent -= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// 20 ms (160 samples) of a `freq` Hz tone in μ-law, starting at sample `at`.
pub fn tone_frame(freq: f64, at: u32) -> Vec<u8> {
    (at..at + 160)
        .map(|i| {
            let x = (f64::from(i) * 2.0 * std::f64::consts::PI * freq / 8000.0).sin() * 10_000.0;
            ulaw(x as i16)
        })
        .collect()
}

/// The RTP packets of a pcap file (Ethernet, IPv4, UDP): payload type and
/// payload, in file order.
pub fn pcap_rtp(path: &Path) -> Result<Vec<(u8, Vec<u8>)>> {
    let d = std::fs::read(path).with_context(|| path.display().to_string())?;
    if d.len() < 24 || d[..4] != [0xd4, 0xc3, 0xb2, 0xa1] {
        bail!("{}: not a little-endian pcap", path.display());
    }
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= d.len() {
        let incl = u32::from_le_bytes(d[off + 8..off + 12].try_into()?) as usize;
        off += 16;
        let pkt = d
            .get(off..off + incl)
            .ok_or_else(|| anyhow!("truncated pcap"))?;
        off += incl;
        let ihl = usize::from(pkt[14] & 0x0f) * 4;
        let rtp = &pkt[14 + ihl + 8..];
        out.push((rtp[1] & 0x7f, rtp[12..].to_vec()));
    }
    Ok(out)
}

/// A-law to linear (G.711), for reference audio.
pub fn alaw_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = (a >> 4) & 0x07;
    let mantissa = i32::from(a & 0x0f);
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    (if a & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

/// A recording read with `hound` (a standard WAV reader): its format and
/// its two channels.
#[derive(Debug)]
pub struct Recording {
    pub channels: u16,
    pub sample_rate: u32,
    pub bits: u16,
    pub left: Vec<i16>,
    pub right: Vec<i16>,
}

impl Recording {
    pub fn read(path: &Path) -> Result<Self> {
        let mut r = hound::WavReader::open(path).with_context(|| path.display().to_string())?;
        let spec = r.spec();
        let samples: Vec<i16> = r.samples::<i16>().collect::<Result<_, _>>()?;
        let ch = usize::from(spec.channels.max(1));
        Ok(Recording {
            channels: spec.channels,
            sample_rate: spec.sample_rate,
            bits: spec.bits_per_sample,
            left: samples.iter().step_by(ch).copied().collect(),
            right: samples.iter().skip(1).step_by(ch).copied().collect(),
        })
    }

    pub fn seconds(&self) -> f64 {
        self.left.len() as f64 / f64::from(self.sample_rate.max(1))
    }
}

/// Zero crossings per second of `samples` between two times (s).
pub fn crossings_per_s(samples: &[i16], from: f64, to: f64) -> f64 {
    let (a, b) = (
        (from * 8000.0) as usize,
        ((to * 8000.0) as usize).min(samples.len()),
    );
    if b <= a + 1 {
        return 0.0;
    }
    let part = &samples[a..b];
    let n = part.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    n as f64 / ((b - a) as f64 / 8000.0)
}

/// Where `reference` best lines up in `signal` (lag in samples, `signal`
/// later) and the normalised correlation there: first on 10 ms energy
/// envelopes, then sample by sample around the best envelope lag.
pub fn best_alignment(signal: &[i16], reference: &[i16]) -> (usize, f64) {
    let env = |s: &[i16]| -> Vec<f64> {
        s.chunks(80)
            .map(|c| c.iter().map(|&x| f64::from(x).abs()).sum::<f64>() / c.len() as f64)
            .collect()
    };
    let (es, er) = (env(signal), env(reference));
    let mut best = (0usize, f64::MIN);
    for lag in 0..es.len().saturating_sub(er.len() / 2) {
        let n = er.len().min(es.len() - lag);
        let c = ncc(&es[lag..lag + n], &er[..n]);
        if c > best.1 {
            best = (lag, c);
        }
    }
    let centre = best.0 * 80;
    let mut fine = (centre, f64::MIN);
    for lag in centre.saturating_sub(160)..=centre + 160 {
        if lag >= signal.len() {
            break;
        }
        let n = reference.len().min(signal.len() - lag);
        let a: Vec<f64> = signal[lag..lag + n].iter().map(|&x| f64::from(x)).collect();
        let b: Vec<f64> = reference[..n].iter().map(|&x| f64::from(x)).collect();
        let c = ncc(&a, &b);
        if c > fine.1 {
            fine = (lag, c);
        }
    }
    fine
}

fn ncc(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let (ma, mb) = (
        a[..n].iter().sum::<f64>() / n as f64,
        b[..n].iter().sum::<f64>() / n as f64,
    );
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a[i] - ma, b[i] - mb);
        num += x * y;
        da += x * x;
        db += y * y;
    }
    if da == 0.0 || db == 0.0 {
        0.0
    } else {
        num / (da * db).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_is_found_where_it_was_put() {
        let reference: Vec<i16> = (0..8000)
            .map(|i| ((i * 7919 % 2003) as i16 - 1000) * 10)
            .collect();
        let mut signal = vec![0i16; 3000];
        signal.extend_from_slice(&reference);
        signal.extend(vec![0i16; 1000]);
        let (lag, c) = best_alignment(&signal, &reference);
        assert_eq!(lag, 3000);
        assert!(c > 0.99, "{c}");
        assert_eq!(ulaw(0), 0xff);
    }
}
