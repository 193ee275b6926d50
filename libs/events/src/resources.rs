//! What an instance may use, as a release asks for it (`[run] cpus` and `memory` in
//! `slipway.toml`): types that hold only values every target can enforce. The Docker target
//! takes them as `NanoCpus` and `Memory`, the Kubernetes target as `resources` quantities.
//!
//! On the wire `cpus` is a number (`0.5`, `2`) and `memory` a string with a binary unit
//! (`"256MiB"`, `"1GiB"`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::inputs::InvalidInput;

/// Most CPUs an instance may ask for.
pub const MAX_CPUS: u32 = 64;
/// Least and most memory an instance may ask for, in MiB (16 MiB, 64 GiB).
pub const MIN_MEMORY_MIB: u64 = 16;
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;

/// CPUs an instance may use: more than 0 and at most [`MAX_CPUS`], held in thousandths of a CPU
/// (a finer value is rounded to the nearest thousandth, the unit Kubernetes counts in).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Cpus(u32);

impl Cpus {
    pub fn parse(value: f64) -> Result<Self, InvalidInput> {
        let bad = |why: &str| Err(InvalidInput(format!("`{value}`: {why}")));
        if !value.is_finite() || value <= 0.0 {
            return bad("must be a number of CPUs above 0, such as 0.5 or 2");
        }
        if value > f64::from(MAX_CPUS) {
            return bad(&format!("must be at most {MAX_CPUS}"));
        }
        let millis = (value * 1000.0).round() as u32;
        if millis == 0 {
            return bad("must be at least 0.001");
        }
        Ok(Self(millis))
    }

    /// From thousandths of a CPU.
    pub fn from_millis(millis: u32) -> Result<Self, InvalidInput> {
        Self::parse(f64::from(millis) / 1000.0)
    }

    /// Thousandths of a CPU.
    pub fn millis(self) -> u32 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1000.0
    }

    /// Docker's `NanoCpus`.
    pub fn nano(self) -> i64 {
        i64::from(self.0) * 1_000_000
    }

    /// A Kubernetes quantity: `2` for whole CPUs, else `500m`.
    pub fn quantity(self) -> String {
        if self.0.is_multiple_of(1000) {
            (self.0 / 1000).to_string()
        } else {
            format!("{}m", self.0)
        }
    }

    /// Deserialises CPUs whose errors name `field`.
    pub(crate) fn named<'de, D: Deserializer<'de>>(
        field: &'static str,
        d: D,
    ) -> Result<Option<Self>, D::Error> {
        let fail = |why: String| serde::de::Error::custom(format!("{field}: {why}"));
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(v) => Self::parse(v).map(Some).map_err(|e| fail(e.to_string())),
                None => Err(fail(format!("`{n}` is not a number of CPUs"))),
            },
            other => Err(fail(format!(
                "must be a number of CPUs such as 0.5 or 2, not {other}"
            ))),
        }
    }
}

impl TryFrom<f64> for Cpus {
    type Error = InvalidInput;
    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<Cpus> for f64 {
    fn from(c: Cpus) -> Self {
        c.as_f64()
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_f64())
    }
}

impl fmt::Debug for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cpus({self})")
    }
}

/// Memory an instance may use, a whole number of MiB from [`MIN_MEMORY_MIB`] to
/// [`MAX_MEMORY_MIB`]; written `<n>MiB` or `<n>GiB`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Memory(u64);

impl Memory {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let bad = |why: String| Err(InvalidInput(format!("`{}`: {why}", raw.escape_debug())));
        let (digits, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => raw.split_at(at),
            None => (raw, ""),
        };
        let per_unit = match unit {
            "MiB" => 1,
            "GiB" => 1024,
            _ => {
                return bad(
                    "must be a whole number of MiB or GiB, such as `256MiB` or `1GiB`".to_owned(),
                );
            }
        };
        let Some(mib) = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(per_unit))
        else {
            return bad("must start with a whole number, such as `256MiB`".to_owned());
        };
        Self::from_mib(mib).or_else(|e| bad(e.0))
    }

    pub fn from_mib(mib: u64) -> Result<Self, InvalidInput> {
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
            return Err(InvalidInput(format!(
                "must be from {MIN_MEMORY_MIB}MiB to {}GiB",
                MAX_MEMORY_MIB / 1024
            )));
        }
        Ok(Self(mib))
    }

    pub fn mib(self) -> u64 {
        self.0
    }

    pub fn bytes(self) -> i64 {
        // At most 64 GiB: far inside i64.
        (self.0 * 1024 * 1024) as i64
    }

    /// A Kubernetes quantity: `1Gi`, `256Mi`.
    pub fn quantity(self) -> String {
        if self.0.is_multiple_of(1024) {
            format!("{}Gi", self.0 / 1024)
        } else {
            format!("{}Mi", self.0)
        }
    }

    /// Deserialises memory whose errors name `field`.
    pub(crate) fn named<'de, D: Deserializer<'de>>(
        field: &'static str,
        d: D,
    ) -> Result<Option<Self>, D::Error> {
        let fail = |why: String| serde::de::Error::custom(format!("{field}: {why}"));
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => {
                Self::parse(&s).map(Some).map_err(|e| fail(e.to_string()))
            }
            other => Err(fail(format!(
                "must be a string such as \"256MiB\" or \"1GiB\", not {other}"
            ))),
        }
    }
}

impl TryFrom<String> for Memory {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Memory> for String {
    fn from(m: Memory) -> Self {
        m.to_string()
    }
}

impl std::str::FromStr for Memory {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1024) {
            write!(f, "{}GiB", self.0 / 1024)
        } else {
            write!(f, "{}MiB", self.0)
        }
    }
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Memory({self})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cpus_hold_only_what_targets_can_enforce() {
        let half = Cpus::parse(0.5).unwrap();
        assert_eq!(
            (half.millis(), half.nano(), half.quantity()),
            (500, 500_000_000, "500m".to_owned())
        );
        assert_eq!(Cpus::parse(2.0).unwrap().quantity(), "2");
        assert_eq!(Cpus::parse(64.0).unwrap().millis(), 64_000);
        assert_eq!(
            Cpus::parse(0.0004).unwrap_err().0,
            "`0.0004`: must be at least 0.001"
        );
        for bad in [0.0, -1.0, 64.001, f64::NAN, f64::INFINITY] {
            assert!(Cpus::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_value(half).unwrap(), serde_json::json!(0.5));
        let back: Cpus = serde_json::from_value(serde_json::json!(0.5)).unwrap();
        assert_eq!(back, half);
        assert!(serde_json::from_value::<Cpus>(serde_json::json!(65)).is_err());
    }

    #[test]
    fn memory_is_whole_mib_from_16_mib_to_64_gib() {
        let m = Memory::parse("256MiB").unwrap();
        assert_eq!(
            (m.mib(), m.bytes(), m.quantity()),
            (256, 256 << 20, "256Mi".to_owned())
        );
        let g = Memory::parse("1GiB").unwrap();
        assert_eq!(
            (g.mib(), g.quantity(), g.to_string()),
            (1024, "1Gi".to_owned(), "1GiB".to_owned())
        );
        assert_eq!(
            Memory::parse("1024MiB").unwrap(),
            g,
            "one value, two spellings"
        );
        assert_eq!(Memory::parse("1536MiB").unwrap().to_string(), "1536MiB");
        assert_eq!(Memory::parse("16MiB").unwrap().mib(), 16);
        assert_eq!(Memory::parse("64GiB").unwrap().mib(), 65_536);
        for (bad, why) in [
            ("15MiB", "from 16MiB to 64GiB"),
            ("65GiB", "from 16MiB to 64GiB"),
            ("256", "MiB or GiB"),
            ("256MB", "MiB or GiB"),
            ("1.5GiB", "MiB or GiB"),
            ("MiB", "whole number"),
            (" 1GiB", "MiB or GiB"),
            ("99999999999999999999GiB", "whole number"),
        ] {
            let e = Memory::parse(bad).unwrap_err().0;
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(serde_json::to_value(g).unwrap(), serde_json::json!("1GiB"));
        assert!(serde_json::from_value::<Memory>(serde_json::json!("8MiB")).is_err());
    }
}
