//! MAC addresses: the normalised form, parsing, and random generation.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

/// Why a text is not a MAC address a port can own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six hex octets separated by `:` or `-`.
    #[error("invalid MAC address {input:?}: expected six hex octets separated by `:` or `-`")]
    Invalid {
        /// The offending text.
        input: String,
    },
    /// The all-zero MAC.
    #[error("MAC address 00:00:00:00:00:00 cannot be a port address")]
    Zero,
    /// The broadcast MAC.
    #[error("MAC address ff:ff:ff:ff:ff:ff is the broadcast address")]
    Broadcast,
    /// A MAC with the group bit set.
    #[error("MAC address {mac} is multicast (lowest bit of the first octet set)")]
    Multicast {
        /// The rejected MAC.
        mac: MacAddress,
    },
}

/// A unicast MAC address, shown in the lower-case colon form Kube-OVN
/// writes into annotations and OVN ports (`0a:1b:2c:3d:4e:5f`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// Wraps raw octets without any check (for gateway MACs read from OVN).
    pub const fn from_octets(octets: [u8; 6]) -> MacAddress {
        MacAddress(octets)
    }

    /// The six octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the locally-administered bit is set.
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// Whether the group (multicast) bit is set; broadcast is also multicast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// A random locally-administered unicast MAC: 46 random bits, as
    /// Kube-OVN has done since 24 bits proved too few (kube-ovn#4001).
    pub fn random(rng: &mut dyn RngCore) -> MacAddress {
        let mut octets = [0u8; 6];
        rng.fill_bytes(&mut octets);
        octets[0] = (octets[0] | 0x02) & !0x01;
        MacAddress(octets)
    }

    /// Parses a static `mac_address` annotation: six two-digit hex octets
    /// separated all by `:` or all by `-`, any case. Multicast, broadcast
    /// and all-zero addresses are rejected because OVN cannot use them as a
    /// port's own address.
    pub fn parse(input: &str) -> Result<MacAddress, MacError> {
        let text = input.trim();
        let invalid = || MacError::Invalid {
            input: input.to_owned(),
        };
        let separator = match text.as_bytes().get(2) {
            Some(b':') => ':',
            Some(b'-') => '-',
            _ => return Err(invalid()),
        };
        let mut octets = [0u8; 6];
        let mut parts = text.split(separator);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        let mac = MacAddress(octets);
        if octets == [0; 6] {
            return Err(MacError::Zero);
        }
        if octets == [0xff; 6] {
            return Err(MacError::Broadcast);
        }
        if mac.is_multicast() {
            return Err(MacError::Multicast { mac });
        }
        Ok(mac)
    }
}

impl FromStr for MacAddress {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MacAddress::parse(s)
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl From<macaddr::MacAddr6> for MacAddress {
    fn from(mac: macaddr::MacAddr6) -> Self {
        MacAddress(mac.into_array())
    }
}

impl From<MacAddress> for macaddr::MacAddr6 {
    fn from(mac: MacAddress) -> Self {
        macaddr::MacAddr6::from(mac.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_normalisation_and_rejections() {
        assert_eq!(
            MacAddress::parse("0A-1B-2C-3D-4E-5F").unwrap().to_string(),
            "0a:1b:2c:3d:4e:5f"
        );
        assert_eq!(
            MacAddress::parse("0a:1B:2c:3d:4e:5f").unwrap().to_string(),
            "0a:1b:2c:3d:4e:5f"
        );
        assert_eq!(MacAddress::parse("00:00:00:00:00:00"), Err(MacError::Zero));
        assert_eq!(
            MacAddress::parse("FF:FF:FF:FF:FF:FF"),
            Err(MacError::Broadcast)
        );
        assert!(matches!(
            MacAddress::parse("01:00:5e:00:00:01"),
            Err(MacError::Multicast { .. })
        ));
        for bad in [
            "0a:1b:2c:3d:4e",
            "0a:1b-2c:3d:4e:5f",
            "0a1b.2c3d.4e5f",
            "0a:1b:2c:3d:4e:5f:00",
            "g0:1b:2c:3d:4e:5f",
            "+a:1b:2c:3d:4e:5f",
        ] {
            assert!(
                matches!(MacAddress::parse(bad), Err(MacError::Invalid { .. })),
                "{bad}"
            );
        }
    }
}
