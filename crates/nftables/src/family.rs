//! What differs between the `ip` and `ip6` tables: payload offsets, type names, lengths.

use std::net::IpAddr;

use nftproxy_model::IpFamily;
use nftproxy_nft_wire::NfFamily;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Family(pub IpFamily);

impl Family {
    pub const V4: Family = Family(IpFamily::V4);
    pub const V6: Family = Family(IpFamily::V6);

    /// The nf_tables table family of this IP family.
    pub fn nfproto(self) -> NfFamily {
        match self.0 {
            IpFamily::V4 => NfFamily::Ip,
            IpFamily::V6 => NfFamily::Ip6,
        }
    }
    /// `ip` / `ip6`: the table family and the payload protocol keyword.
    pub fn word(self) -> &'static str {
        match self.0 {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }
    pub fn addr_type(self) -> &'static str {
        match self.0 {
            IpFamily::V4 => "ipv4_addr",
            IpFamily::V6 => "ipv6_addr",
        }
    }
    /// nft's datatype number for the address type.
    pub fn addr_type_id(self) -> u32 {
        match self.0 {
            IpFamily::V4 => 7,
            IpFamily::V6 => 8,
        }
    }
    pub fn addr_len(self) -> u32 {
        match self.0 {
            IpFamily::V4 => 4,
            IpFamily::V6 => 16,
        }
    }
    pub fn saddr_offset(self) -> u32 {
        match self.0 {
            IpFamily::V4 => 12,
            IpFamily::V6 => 8,
        }
    }
    pub fn daddr_offset(self) -> u32 {
        match self.0 {
            IpFamily::V4 => 16,
            IpFamily::V6 => 24,
        }
    }
    /// ICMP code of `reject` (port unreachable) for this family.
    pub fn reject_code(self) -> u8 {
        match self.0 {
            IpFamily::V4 => 3,
            IpFamily::V6 => 4,
        }
    }
    pub fn matches(self, ip: &IpAddr) -> bool {
        self.0.matches(ip)
    }
}
