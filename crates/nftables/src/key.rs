//! Set keys in the kernel's layout.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The size of an interface name in a key (`IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

/// A set key: one value, or a concatenation (`ifname . ipv4_addr`), each
/// part padded to a multiple of 4 bytes as nf_tables lays out registers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Key(Vec<u8>);

impl Key {
    /// An empty key, to append parts to.
    pub fn new() -> Self {
        Key(Vec::new())
    }

    fn part(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
        self
    }

    /// An interface name (`ifname`): zero-padded to 16 bytes. Names longer
    /// than 15 bytes are not interface names and are cut.
    pub fn ifname(self, name: &str) -> Self {
        let mut buf = [0u8; IFNAMSIZ];
        let n = name.len().min(IFNAMSIZ - 1);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.part(&buf)
    }

    /// An IPv4 address (`ipv4_addr`), network byte order.
    pub fn ipv4(self, addr: Ipv4Addr) -> Self {
        self.part(&addr.octets())
    }

    /// An IPv6 address (`ipv6_addr`), network byte order.
    pub fn ipv6(self, addr: Ipv6Addr) -> Self {
        self.part(&addr.octets())
    }

    /// A packet or connection mark (`mark`), host byte order as the kernel
    /// keeps it in registers.
    pub fn mark(self, mark: u32) -> Self {
        self.part(&mark.to_ne_bytes())
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The mark of a key made by [`Key::mark`] alone.
    pub fn as_mark(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.0.as_slice().try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenations_are_padded_per_part() {
        let k = Key::new().ifname("sgh1").ipv4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(k.bytes().len(), 20);
        assert_eq!(&k.bytes()[..5], b"sgh1\0");
        assert_eq!(&k.bytes()[16..], &[192, 0, 2, 1]);
        let k = Key::new().ifname("x").mark(7);
        assert_eq!(k.bytes().len(), 20);
        assert_eq!(Key::new().ipv6(Ipv6Addr::LOCALHOST).bytes().len(), 16);
    }

    #[test]
    fn a_mark_key_reads_back_and_no_other_key_is_a_mark() {
        assert_eq!(Key::new().mark(0x8000_0007).as_mark(), Some(0x8000_0007));
        assert_eq!(Key::new().ifname("x").mark(7).as_mark(), None);
        assert_eq!(Key::new().ipv6(Ipv6Addr::LOCALHOST).as_mark(), None);
    }
}
