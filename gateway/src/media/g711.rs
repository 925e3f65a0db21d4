//! G.711 (ITU-T) μ-law and A-law to 16-bit linear PCM.

/// Every μ-law byte's sample, computed at compile time.
const ULAW: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_of(i as u8);
        i += 1;
    }
    t
};

/// Every A-law byte's sample, computed at compile time.
const ALAW: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_of(i as u8);
        i += 1;
    }
    t
};

/// A G.711 law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    Ulaw,
    Alaw,
}

/// Decodes `bytes` into `out` (as many as both hold); returns how many.
pub fn decode(law: Law, bytes: &[u8], out: &mut [i16]) -> usize {
    let table = match law {
        Law::Ulaw => &ULAW,
        Law::Alaw => &ALAW,
    };
    let n = bytes.len().min(out.len());
    for (s, b) in out[..n].iter_mut().zip(&bytes[..n]) {
        *s = table[usize::from(*b)];
    }
    n
}

const fn ulaw_of(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = (u >> 4) & 0x07;
    let mantissa = (u & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    let sample = if sign != 0 { -magnitude } else { magnitude };
    sample as i16
}

const fn alaw_of(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let sign = a & 0x80;
    let exponent = (a >> 4) & 0x07;
    let mantissa = (a & 0x0f) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    let sample = if sign != 0 { magnitude } else { -magnitude };
    sample as i16
}

/// Linear sample to μ-law (for tests and generated audio).
pub fn to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulaw(byte: u8) -> i16 {
        ULAW[usize::from(byte)]
    }

    fn alaw(byte: u8) -> i16 {
        ALAW[usize::from(byte)]
    }

    #[test]
    fn known_values() {
        // Silence and the extremes of both laws (G.711 tables).
        assert_eq!(ulaw(0xff), 0);
        assert_eq!(ulaw(0x7f), 0);
        assert_eq!(ulaw(0x00), -32_124);
        assert_eq!(ulaw(0x80), 32_124);
        assert_eq!(alaw(0xd5), 8);
        assert_eq!(alaw(0x55), -8);
        assert_eq!(alaw(0xaa), 32_256);
        assert_eq!(alaw(0x2a), -32_256);
    }

    #[test]
    fn decode_uses_the_law_asked_for() {
        let mut out = [0i16; 3];
        assert_eq!(decode(Law::Ulaw, &[0xff, 0x00, 0x80, 0x7f], &mut out), 3);
        assert_eq!(out, [0, -32_124, 32_124]);
        assert_eq!(decode(Law::Alaw, &[0xd5, 0x2a], &mut out), 2);
        assert_eq!(out[..2], [8, -32_256]);
    }

    #[test]
    fn ulaw_round_trips_within_its_quantisation() {
        for s in (-32_000i32..32_000).step_by(97) {
            let back = i32::from(ulaw(to_ulaw(s as i16)));
            let step = (s.abs() / 16).max(8);
            assert!((back - s).abs() <= step, "{s} -> {back}");
        }
    }
}
