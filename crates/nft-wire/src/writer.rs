//! Netlink attribute writer: TLVs padded to 4 bytes, nests patched when they close.

use crate::consts::NLA_F_NESTED;

#[derive(Default, Debug, Clone)]
pub struct Writer {
    pub(crate) buf: Vec<u8>,
}

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Writer {
    /// The attributes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    pub fn bytes(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        debug_assert!(len <= u16::MAX as usize);
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }
    /// netlink integers in nf_tables attributes are big-endian
    pub fn u32(&mut self, ty: u16, v: u32) {
        self.bytes(ty, &v.to_be_bytes());
    }
    pub fn u64(&mut self, ty: u16, v: u64) {
        self.bytes(ty, &v.to_be_bytes());
    }
    pub fn str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.bytes(ty, &v);
    }
    pub fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }
    pub fn end(&mut self, at: usize) {
        let len = self.buf.len() - at;
        assert!(len <= u16::MAX as usize, "nested attribute over 64 KiB");
        self.buf[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }
}

/// libnftnl's userdata TLVs: one byte type, one byte length, value.
#[derive(Default, Debug, Clone)]
pub struct Udata(pub Vec<u8>);

impl Udata {
    pub fn put(mut self, ty: u8, value: &[u8]) -> Self {
        assert!(value.len() <= 255, "userdata value too long");
        self.0.push(ty);
        self.0.push(value.len() as u8);
        self.0.extend_from_slice(value);
        self
    }
    /// A NUL-terminated string value (how nft stores comments).
    pub fn put_str(mut self, ty: u8, s: &str) -> Self {
        self.push_str(ty, s);
        self
    }
    /// [`Udata::put_str`] in place, so that a buffer can serve many elements' comments.
    pub fn push_str(&mut self, ty: u8, s: &str) {
        assert!(s.len() < 255, "userdata value too long");
        self.0.push(ty);
        self.0.push(s.len() as u8 + 1);
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
    }
    pub fn put_u32(self, ty: u8, v: u32) -> Self {
        self.put(ty, &v.to_ne_bytes())
    }
}
