//! `google.protobuf.Duration` in its JSON form: decimal seconds with an `s` suffix (`"0.25s"`).

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A duration written as Envoy writes it. Proto3's JSON mapping allows up to nine fractional
/// digits and no other unit, so `"250ms"` is an error rather than a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtoDuration(pub Duration);

pub fn parse(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration '{s}': expected seconds with an 's' suffix, like \"0.25s\"");
    let digits = s.strip_suffix('s').ok_or_else(bad)?;
    if digits.starts_with('-') {
        return Err(format!("invalid duration '{s}': must not be negative"));
    }
    let (whole, frac) = match digits.split_once('.') {
        Some((w, f)) => (w, f),
        None => (digits, ""),
    };
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return Err(bad());
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let scale = 10u32.pow(9 - frac.len() as u32);
        frac.parse::<u32>().map_err(|_| bad())? * scale
    };
    Ok(Duration::new(secs, nanos))
}

impl<'de> Deserialize<'de> for ProtoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ProtoDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string like \"0.25s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ProtoDuration, E> {
                parse(v).map(ProtoDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn envoy_forms() {
        assert_eq!(parse("0.25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("1.000000001s"), Ok(Duration::new(1, 1)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn rejects_other_units_and_junk() {
        for bad in [
            "250ms",
            "5",
            "s",
            "-1s",
            "1.0000000001s",
            "1e3s",
            "abc",
            "1..2s",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
