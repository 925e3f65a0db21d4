//! Call recordings: a stereo WAV per call (customer left, manager right),
//! 16-bit PCM at 8 kHz decoded from G.711.
//!
//! Each channel's samples are placed by their RTP timestamp relative to
//! where that stream started on the wall clock, so both channels stay
//! aligned with real time: a lost packet is silence, a late one lands in
//! its place, a sender that jumps (a new SSRC after hold, a reset clock)
//! is re-anchored to the wall clock. Samples older than the jitter window
//! are written out; the header's sizes are rewritten after every write,
//! so the file is playable while it grows and after a crash.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Samples per millisecond at 8 kHz.
const PER_MS: i64 = 8;
/// How long a sample waits for late packets before it is written.
pub const JITTER_MS: u64 = 200;
/// A stream more than this far from the wall clock is re-anchored.
const MAX_SKEW: i64 = 8_000;
const HEADER: usize = 44;

/// Which side a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Customer = 0,
    Manager = 1,
}

#[derive(Debug, Default, Clone, Copy)]
struct Anchor {
    ssrc: u32,
    /// Extended timestamp and frame at the anchor.
    ts: i64,
    frame: i64,
    /// The last timestamp seen, for extending across wrap-around.
    last: u32,
    last_ext: i64,
}

/// Where samples go on the timeline; sans-IO.
#[derive(Debug)]
pub struct Mixer {
    /// Frame index of `buf[0]` (frames before it are written).
    base: i64,
    buf: VecDeque<[i16; 2]>,
    anchors: [Option<Anchor>; 2],
    pub late: u64,
}

impl Default for Mixer {
    fn default() -> Self {
        Self::new()
    }
}

impl Mixer {
    pub fn new() -> Self {
        Mixer {
            base: 0,
            buf: VecDeque::new(),
            anchors: [None, None],
            late: 0,
        }
    }

    /// Places one packet's samples: `now_ms` since the recording began.
    pub fn push(&mut self, ch: Channel, now_ms: u64, ssrc: u32, ts: u32, samples: &[i16]) {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX / 16) * PER_MS;
        let slot = &mut self.anchors[ch as usize];
        let fresh = |a: &mut Option<Anchor>| {
            *a = Some(Anchor {
                ssrc,
                ts: i64::from(ts),
                frame: now,
                last: ts,
                last_ext: i64::from(ts),
            });
        };
        match slot {
            Some(a) if a.ssrc == ssrc => {
                let ext = a.last_ext + i64::from(ts.wrapping_sub(a.last) as i32);
                if ext > a.last_ext {
                    a.last = ts;
                    a.last_ext = ext;
                }
                let pos = a.frame + (ext - a.ts);
                // Far ahead of the clock, or far behind it where nothing
                // can be placed any more: the sender's clock jumped.
                // Far behind but not yet written (the relay itself was
                // held up, and its packets come in a burst): placed by
                // the timestamp like any other.
                if pos - now > MAX_SKEW || (now - pos > MAX_SKEW && pos < self.base) {
                    fresh(slot);
                }
            }
            _ => fresh(slot),
        }
        let Some(a) = slot else { return };
        let ext = a.last_ext + i64::from(ts.wrapping_sub(a.last) as i32);
        let mut pos = a.frame + (ext - a.ts);
        let mut samples = samples;
        if pos < self.base {
            // Already written: keep only what is still ahead.
            let skip = usize::try_from(self.base - pos).unwrap_or(usize::MAX);
            if skip >= samples.len() {
                self.late += 1;
                return;
            }
            samples = &samples[skip..];
            pos = self.base;
        }
        let start = usize::try_from(pos - self.base).unwrap_or(0);
        let end = start + samples.len();
        if self.buf.len() < end {
            self.buf.resize(end, [0, 0]);
        }
        for (frame, s) in self.buf.range_mut(start..end).zip(samples) {
            frame[ch as usize] = *s;
        }
    }

    /// Takes the frames before `until_ms` (padding with silence up to it),
    /// as interleaved little-endian bytes.
    pub fn drain(&mut self, until_ms: u64, out: &mut Vec<u8>) {
        let until = i64::try_from(until_ms).unwrap_or(i64::MAX / 16) * PER_MS;
        let n = usize::try_from(until - self.base).unwrap_or(0);
        if self.buf.len() < n {
            self.buf.resize(n, [0, 0]);
        }
        let from = out.len();
        out.resize(from + n * 4, 0);
        for (bytes, [l, r]) in out[from..].chunks_exact_mut(4).zip(self.buf.drain(..n)) {
            bytes[..2].copy_from_slice(&l.to_le_bytes());
            bytes[2..].copy_from_slice(&r.to_le_bytes());
        }
        self.base += i64::try_from(n).unwrap_or(0);
    }

    /// The end of the furthest sample placed, in ms.
    pub fn end_ms(&self) -> u64 {
        u64::try_from((self.base + i64::try_from(self.buf.len()).unwrap_or(0)) / PER_MS)
            .unwrap_or(0)
    }
}

fn header(data_len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(data_len.saturating_add(36)).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&2u16.to_le_bytes()); // stereo
    h[24..28].copy_from_slice(&8000u32.to_le_bytes());
    h[28..32].copy_from_slice(&32_000u32.to_le_bytes()); // bytes per second
    h[32..34].copy_from_slice(&4u16.to_le_bytes()); // block align
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// A recording being written.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    file: File,
    pub mixer: Mixer,
    data_len: u64,
    scratch: Vec<u8>,
}

/// A finished recording.
#[derive(Debug, Clone)]
pub struct Finished {
    pub path: PathBuf,
    pub duration_ms: u64,
    pub size: u64,
}

impl Recorder {
    /// Creates the file (and its directories) with an empty header.
    pub fn create(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = File::create(path)?;
        file.write_all(&header(0))?;
        Ok(Recorder {
            path: path.to_owned(),
            file,
            mixer: Mixer::new(),
            data_len: 0,
            scratch: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what is older than the jitter window at `now_ms`.
    pub fn flush(&mut self, now_ms: u64) -> io::Result<()> {
        self.write_until(now_ms.saturating_sub(JITTER_MS))
    }

    fn write_until(&mut self, until_ms: u64) -> io::Result<()> {
        self.scratch.clear();
        self.mixer.drain(until_ms, &mut self.scratch);
        if self.scratch.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.scratch)?;
        self.data_len += self.scratch.len() as u64;
        // Both sizes (RIFF's at 4, data's at 40) in one write.
        let len = u32::try_from(self.data_len).unwrap_or(u32::MAX);
        self.file.write_all_at(&header(len)[4..], 4)
    }

    /// Writes everything up to `end_ms` (the call's end). Not fsynced:
    /// the page cache survives a crash of the process, and a file the
    /// machine lost power under is repaired at start like any other.
    pub fn finish(mut self, end_ms: u64) -> io::Result<Finished> {
        self.write_until(end_ms)?;
        Ok(Finished {
            path: self.path,
            duration_ms: self.data_len / 32,
            size: self.data_len + HEADER as u64,
        })
    }
}

/// Makes a recording cut short by a crash playable: the header's sizes
/// are set to what the file holds (whole frames). True when it changed.
pub fn repair(path: &Path) -> io::Result<bool> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = file.metadata()?.len();
    let mut h = [0u8; HEADER];
    if len < HEADER as u64 {
        return Ok(false);
    }
    file.read_exact_at(&mut h, 0)?;
    if &h[0..4] != b"RIFF" || &h[8..12] != b"WAVE" || &h[36..40] != b"data" {
        return Ok(false);
    }
    let data = (len - HEADER as u64) / 4 * 4;
    let data32 = u32::try_from(data).unwrap_or(u32::MAX);
    if h[40..44] == data32.to_le_bytes() && len == data + HEADER as u64 {
        return Ok(false);
    }
    file.set_len(data + HEADER as u64)?;
    file.write_all_at(&header(data32), 0)?;
    file.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<[i16; 2]> {
        bytes
            .chunks_exact(4)
            .map(|c| {
                [
                    i16::from_le_bytes([c[0], c[1]]),
                    i16::from_le_bytes([c[2], c[3]]),
                ]
            })
            .collect()
    }

    #[test]
    fn channels_line_up_with_the_wall_clock_and_gaps_are_silence() {
        let mut m = Mixer::new();
        // The customer starts at 0 ms, the manager at 100 ms.
        m.push(Channel::Customer, 0, 1, 5_000, &[1; 160]);
        m.push(Channel::Manager, 100, 2, 90_000, &[2; 160]);
        // Customer packet 3 (ts +320) arrives; packet 2 was lost.
        m.push(Channel::Customer, 40, 1, 5_320, &[3; 160]);
        let mut out = Vec::new();
        m.drain(140, &mut out);
        let f = frames(&out);
        assert_eq!(f.len(), 1_120);
        assert!(f[..160].iter().all(|s| s[0] == 1));
        assert!(
            f[160..320].iter().all(|s| s[0] == 0),
            "the lost packet is silence"
        );
        assert!(f[320..480].iter().all(|s| s[0] == 3));
        assert!(f[..800].iter().all(|s| s[1] == 0));
        assert!(f[800..960].iter().all(|s| s[1] == 2));
    }

    #[test]
    fn a_late_packet_lands_in_its_place() {
        let mut m = Mixer::new();
        m.push(Channel::Customer, 0, 7, 0, &[1; 160]);
        m.push(Channel::Customer, 40, 7, 320, &[3; 160]);
        m.push(Channel::Customer, 45, 7, 160, &[2; 160]);
        let mut out = Vec::new();
        m.drain(60, &mut out);
        let f = frames(&out);
        assert!(f[160..320].iter().all(|s| s[0] == 2));
        // Too late: already written.
        m.push(Channel::Customer, 70, 7, 0, &[9; 160]);
        assert_eq!(m.late, 1);
    }

    #[test]
    fn timestamps_wrap_and_jumps_reanchor() {
        let mut m = Mixer::new();
        m.push(Channel::Manager, 0, 1, u32::MAX - 159, &[1; 160]);
        m.push(Channel::Manager, 20, 1, 0, &[2; 160]);
        // A new SSRC (after hold) starts where the wall clock is.
        m.push(Channel::Manager, 500, 2, 12_345, &[3; 160]);
        // A reset timestamp on the same SSRC, far from the clock, too.
        m.push(Channel::Manager, 1_000, 2, 999_999, &[4; 160]);
        let mut out = Vec::new();
        m.drain(1_020, &mut out);
        let f = frames(&out);
        assert!(f[160..320].iter().all(|s| s[1] == 2));
        assert!(f[4_000..4_160].iter().all(|s| s[1] == 3));
        assert!(f[8_000..8_160].iter().all(|s| s[1] == 4));
    }

    #[test]
    fn a_burst_after_the_relay_was_held_up_keeps_its_place() {
        let mut m = Mixer::new();
        let mut out = Vec::new();
        // 20 ms packets on time for a second, written out as they age.
        for k in 0..50u32 {
            m.push(Channel::Customer, u64::from(k) * 20, 3, k * 160, &[1; 160]);
        }
        m.drain(800, &mut out);
        // The relay is held up for 1.5 s (nothing is written meanwhile);
        // then the 75 packets sent in that time come at once, and the
        // stream goes on on time.
        for k in 50..125u32 {
            m.push(Channel::Customer, 2_500, 3, k * 160, &[2; 160]);
        }
        for k in 125..150u32 {
            m.push(Channel::Customer, u64::from(k) * 20, 3, k * 160, &[3; 160]);
        }
        m.drain(3_000, &mut out);
        let f = frames(&out);
        assert_eq!(m.late, 0);
        assert!(f[..8_000].iter().all(|s| s[0] == 1));
        assert!(
            f[8_000..20_000].iter().all(|s| s[0] == 2),
            "the burst in its place"
        );
        assert!(f[20_000..24_000].iter().all(|s| s[0] == 3));
    }

    #[test]
    fn the_file_is_playable_while_written_and_repaired_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("2026/11/27/call.wav");
        let mut r = Recorder::create(&path).unwrap();
        r.mixer.push(Channel::Customer, 0, 1, 0, &[100; 8_000]);
        r.flush(1_200).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 8_000 * 4);
        assert_eq!(
            u32::from_le_bytes(bytes[40..44].try_into().unwrap()),
            32_000
        );
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 32_036);
        // A crash mid-write: half a frame more and a stale header.
        drop(r);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[1, 2, 3, 4, 5, 6]).unwrap();
        assert!(repair(&path).unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 32_004);
        assert_eq!(
            u32::from_le_bytes(bytes[40..44].try_into().unwrap()),
            32_004
        );
        assert!(!repair(&path).unwrap());
        let done = Recorder::create(&dir.path().join("b.wav"))
            .unwrap()
            .finish(500)
            .unwrap();
        assert_eq!(done.duration_ms, 500);
        assert_eq!(done.size, 44 + 4 * 4_000);
    }
}
