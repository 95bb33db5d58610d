//! Reading the captures of `nft --debug=mnl` in `fixtures/` (one `<type> <payload hex>` line per
//! message, payloads from the nfgenmsg on), shared by the encoder's and the decoder's golden tests.
#![allow(dead_code)] // each test binary uses a different part

use nftproxy_nft_wire::consts::{NFT_MSG_NEWSET, NFTA_SET_USERDATA};

/// Every line of a capture, batch begin and end included: (type, payload).
pub fn lines(text: &str) -> Vec<(u16, Vec<u8>)> {
    text.lines()
        .map(|l| {
            let (t, h) = l.split_once(' ').unwrap();
            let bytes = (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect();
            (t.parse().unwrap(), bytes)
        })
        .collect()
}

/// A set's opaque userdata (typeof, byte order) as nft wrote it, found by scanning the raw
/// attributes of its NEWSET message (not through the decoder under test).
pub fn set_udata(fix: &[(u16, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    let needle = format!("{name}\0");
    let (_, m) = fix
        .iter()
        .find(|(t, m)| *t == (10 << 8 | NFT_MSG_NEWSET) && m.windows(needle.len()).any(|w| w == needle.as_bytes()))?;
    let mut off = 4;
    while off + 4 <= m.len() {
        let len = u16::from_ne_bytes([m[off], m[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([m[off + 2], m[off + 3]]) & 0x3fff;
        if ty == NFTA_SET_USERDATA {
            return Some(m[off + 4..off + len].to_vec());
        }
        off += (len + 3) & !3;
    }
    None
}
