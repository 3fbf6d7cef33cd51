//! Value types of scenario files: durations ("90s", "40m", "3h", "1h30m")
//! and ranges (`[lo, hi]` sampled per seed, or one number meaning exactly it).

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// A simulated duration, in milliseconds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub u64);

impl Dur {
    pub const fn ms(self) -> u64 {
        self.0
    }
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        let (mut total, mut num, mut seen_unit) = (0u64, String::new(), false);
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let unit = if c == 'm' && chars.peek() == Some(&'s') {
                chars.next();
                "ms"
            } else {
                match c {
                    'h' => "h",
                    'm' => "m",
                    's' => "s",
                    'd' => "d",
                    _ => {
                        return Err(format!(
                            "bad duration {s:?}: unexpected {c:?} (use e.g. \"90s\", \"40m\", \"3h\", \"1h30m\")"
                        ))
                    }
                }
            };
            let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}: a unit needs a number before it"))?;
            num.clear();
            let factor = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => 86_400_000,
            };
            total = n
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("duration {s:?} is too long"))?;
            seen_unit = true;
        }
        if !num.is_empty() || !seen_unit {
            return Err(format!("bad duration {s:?}: missing unit (ms, s, m, h or d)"));
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"90s\", \"40m\" or \"3h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A number that may be given as one value or as `[lo, hi]`.
pub trait RangeValue: Copy + PartialOrd + fmt::Display + Serialize {}
impl RangeValue for f64 {}
impl RangeValue for Dur {}
impl RangeValue for u64 {}

/// `[lo, hi]`, inclusive; a single value `v` means `[v, v]`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Range<T> {
    pub lo: T,
    pub hi: T,
}

impl<T: RangeValue> Range<T> {
    pub const fn exactly(v: T) -> Self {
        Range { lo: v, hi: v }
    }
}

impl<T: RangeValue> Serialize for Range<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.lo, self.hi].serialize(s)
    }
}

impl<'de, T: RangeValue + Deserialize<'de>> Deserialize<'de> for Range<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            One(T),
            Two(Vec<T>),
        }
        let raw = Raw::<T>::deserialize(d)
            .map_err(|_| de::Error::custom("expected a value or a range [low, high] of the right type"))?;
        let r = match raw {
            Raw::One(v) => Range::exactly(v),
            Raw::Two(v) if v.len() == 2 => Range { lo: v[0], hi: v[1] },
            Raw::Two(v) => {
                return Err(de::Error::custom(format!("a range has two values [low, high], got {}", v.len())))
            }
        };
        if r.lo > r.hi {
            return Err(de::Error::custom(format!("impossible range [{}, {}]: low is above high", r.lo, r.hi)));
        }
        Ok(r)
    }
}

/// A probability range: both ends within [0, 1].
#[derive(Copy, Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Prob(pub Range<f64>);

impl Default for Prob {
    fn default() -> Self {
        Prob(Range::exactly(0.0))
    }
}

impl<'de> Deserialize<'de> for Prob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = Range::<f64>::deserialize(d)?;
        if !(0.0..=1.0).contains(&r.lo) || !(0.0..=1.0).contains(&r.hi) {
            return Err(de::Error::custom(format!("probability range [{}, {}] must lie within [0, 1]", r.lo, r.hi)));
        }
        Ok(Prob(r))
    }
}

/// A non-negative rate range (per hour).
#[derive(Copy, Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Rate(pub Range<f64>);

impl Default for Rate {
    fn default() -> Self {
        Rate(Range::exactly(0.0))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = Range::<f64>::deserialize(d)?;
        if r.lo < 0.0 || !r.hi.is_finite() {
            return Err(de::Error::custom(format!("rate range [{}, {}] must be finite and not negative", r.lo, r.hi)));
        }
        Ok(Rate(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_compound_units_and_refuse_nonsense() {
        assert_eq!(Dur::parse("90s"), Ok(Dur(90_000)));
        assert_eq!(Dur::parse("1h30m"), Ok(Dur(5_400_000)));
        assert_eq!(Dur::parse("250ms"), Ok(Dur(250)));
        assert_eq!(Dur::parse("2d"), Ok(Dur(172_800_000)));
        assert!(Dur::parse("10").unwrap_err().contains("missing unit"));
        assert!(Dur::parse("h").unwrap_err().contains("needs a number"));
        assert!(Dur::parse("3 hours").unwrap_err().contains("unexpected"));
        assert!(Dur::parse("99999999999999999999h").is_err());
        assert_eq!(Dur(5_400_000).to_string(), "90m");
    }
}
