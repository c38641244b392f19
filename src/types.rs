//! The words the daemon's modules share, defined once.
//!
//! - [`InfoHash`] is the generator's type: the daemon derives swarms from
//!   the same library that `debtorrent-gen` uses, so there is one.
//! - [`PeerKey`] names a connection inside one torrent task; [`Source`]
//!   says where a block came from. They replace the bare `u32` with
//!   "0 = mirror" that used to be spread over three files: a key is never
//!   zero, so `Source` fits in four bytes (one per block of an assembly).
//! - [`PieceIndex`] is an alias, not a newtype: it is the wire's `u32`
//!   (BEP 3), used as an index everywhere; what got mixed up was keys and
//!   sources, and those are types now.
//! - [`BLOCK`]: the request size (dt1: at most 16 KiB).

use std::fmt;
use std::num::NonZeroU32;

pub use debtorrent_gen::InfoHash;

/// A piece's index in its torrent (one package file = one piece).
pub type PieceIndex = u32;

/// Block size: requests are at most this long (dt1 rule and the de-facto
/// BitTorrent limit).
pub const BLOCK: u32 = 16 * 1024;

/// A connection's key inside its torrent task. Never zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(NonZeroU32);

impl PeerKey {
    /// The first key a torrent task hands out.
    pub const FIRST: PeerKey = PeerKey(NonZeroU32::MIN);

    /// The key after this one (wrapping, skipping zero).
    pub fn next(self) -> PeerKey {
        PeerKey(NonZeroU32::new(self.0.get().wrapping_add(1)).unwrap_or(NonZeroU32::MIN))
    }

    /// The number, for logs and the choker's sample ids.
    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// A key from a number (tests and the choker's sample ids); `None`
    /// for zero.
    pub fn new(n: u32) -> Option<PeerKey> {
        NonZeroU32::new(n).map(PeerKey)
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where bytes of a piece came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The mirror (the web seed).
    Mirror,
    /// A peer connection of the torrent task.
    Peer(PeerKey),
}

impl Source {
    /// The peer, if it was one.
    pub fn peer(self) -> Option<PeerKey> {
        match self {
            Source::Mirror => None,
            Source::Peer(k) => Some(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_is_four_bytes_and_keys_skip_zero() {
        assert_eq!(std::mem::size_of::<Source>(), 4);
        let last = PeerKey::new(u32::MAX).unwrap();
        assert_eq!(last.next(), PeerKey::FIRST);
        assert_eq!(PeerKey::FIRST.next().get(), 2);
        assert_eq!(PeerKey::new(0), None);
    }
}
