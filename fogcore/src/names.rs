//! The names fog's records go by, each with one rule: image, host, group and node names, and
//! MAC addresses. The store, the control plane, the serve config and the CLI all check through
//! here, so a name one part accepts no other part refuses (an image captured locally can be
//! pushed to a master; a node named in `fog.toml` can be added on the master).
//!
//! The newtypes are built by serde through `TryFrom<String>`, so a record that holds one has
//! passed the rule.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest record name.
pub const NAME_MAX: usize = 64;

/// [`check_name`]'s rule as a regular expression (ECMA-262, as JSON Schema reads it): what the
/// API's document gives every name field.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$";

/// The forms [`Mac::of_card`] takes, as a regular expression for the API's document: six hex
/// bytes (one or two digits each) between `:` or `-`, or twelve digits; not multicast (the first
/// byte odd), not all zeros.
pub const MAC_PATTERN: &str = concat!(
    r"^(?![0-9A-Fa-f]?[13579BDFbdf][:-])(?![0-9A-Fa-f][13579BDFbdf][0-9A-Fa-f]{10}$)",
    r"(?!(?:0{1,2}[:-]){5}0{1,2}$)(?!0{12}$)",
    r"(?:(?:[0-9A-Fa-f]{1,2}[:-]){5}[0-9A-Fa-f]{1,2}|[0-9A-Fa-f]{12})$"
);

/// Checks a record name: 1 to [`NAME_MAX`] letters, digits, `.`, `-`, `_`, not starting with `.`
/// (no dot files) or `-` (never read as a command-line flag). `field` names it in the error.
pub fn check_name(field: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > NAME_MAX {
        "longer than 64 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        "use letters, digits, '.', '-', '_'"
    } else if name.starts_with(['.', '-']) {
        "must not start with '.' or '-'"
    } else {
        return Ok(());
    };
    Err(Error::invalid(field, name, reason))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What errors call this kind of name.
            pub const FIELD: &'static str = $field;

            /// The name, if it passes [`check_name`].
            pub fn new(name: impl Into<String>) -> Result<Self> {
                let name = name.into();
                check_name($field, &name)?;
                Ok($name(name))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// An image's name: in a store (`images/NAME`), on the master, on the command line.
    ImageName,
    "image name"
);
name_type!(
    /// A host's name on the master.
    HostName,
    "host name"
);
name_type!(
    /// A group's name on the master.
    GroupName,
    "group name"
);
name_type!(
    /// A node's name: on the master and in the node's `[node] name`.
    NodeName,
    "node name"
);

/// An Ethernet MAC address. Read as `52:54:00:12:34:56`, `52-54-00-12-34-56` (one or two hex
/// digits a byte) or `525400123456`, any case; written lower case with `:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The address in `text`, if it is one (see [`Mac`] for the forms).
    pub fn parse(text: &str) -> Option<Mac> {
        let mut out = [0u8; 6];
        if text.len() == 12 && !text.contains([':', '-']) {
            for (i, byte) in out.iter_mut().enumerate() {
                let part = text.get(2 * i..2 * i + 2)?;
                *byte = hex_byte(part)?;
            }
            return Some(Mac(out));
        }
        let mut parts = text.split([':', '-']);
        for byte in out.iter_mut() {
            *byte = hex_byte(parts.next()?)?;
        }
        parts.next().is_none().then_some(Mac(out))
    }

    /// The address of a network card: not a multicast or broadcast address, not all zeros.
    pub fn of_card(text: &str) -> Result<Mac> {
        let mac = Mac::from_str(text)?;
        if mac.0[0] & 1 == 1 {
            return Err(Error::invalid("mac", text, "a multicast address is not a network card"));
        }
        if mac.0 == [0; 6] {
            return Err(Error::invalid("mac", text, "all zeros"));
        }
        Ok(mac)
    }
}

fn hex_byte(part: &str) -> Option<u8> {
    if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(part, 16).ok()
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Mac::parse(s).ok_or_else(|| Error::invalid("mac", s, "write six hex bytes, like 52:54:00:12:34:56"))
    }
}

impl TryFrom<String> for Mac {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_every_name() {
        for bad in ["", ".hidden", "-flag", "a/b", "has space", "é", &"x".repeat(65)] {
            assert!(ImageName::new(bad).is_err(), "{bad:?}");
            assert!(HostName::new(bad).is_err(), "{bad:?}");
            assert!(NodeName::new(bad).is_err(), "{bad:?}");
        }
        for good in ["win11", "PC-12_b.lab", &"x".repeat(64)] {
            assert_eq!(ImageName::new(good).map(String::from).ok().as_deref(), Some(good));
        }
        let e = serde_json::from_str::<NodeName>("\"-x\"")
            .map(|_| ())
            .expect_err("a leading - is refused");
        assert!(e.to_string().contains("node name"), "{e}");
    }

    #[test]
    fn macs_in_every_written_form() {
        let want = Mac([0x52, 0x54, 0, 0x12, 0x34, 0xab]);
        for text in [
            "52:54:00:12:34:ab",
            "52-54-00-12-34-AB",
            "525400 1234ab".replace(' ', "").as_str(),
            "52:54:0:12:34:ab",
        ] {
            assert_eq!(Mac::parse(text), Some(want), "{text}");
        }
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:ab:cd",
            "52:54:00:12:34:abc",
            "zz:54:00:12:34:ab",
            "5254001234",
        ] {
            assert_eq!(Mac::parse(bad), None, "{bad}");
        }
        assert_eq!(want.to_string(), "52:54:00:12:34:ab");
        assert!(Mac::of_card("01:00:5e:00:00:01").is_err());
        assert!(Mac::of_card("00:00:00:00:00:00").is_err());
    }
}
