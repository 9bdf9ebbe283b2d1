//! Peer keys: the [`KeyStore`] trait that pins identity keys on first use (TOFU), its in-memory
//! implementation [`MemoryKeyStore`], and [`PeerKey`], a peer's keys as fetched from the server.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use lattice_crypto::{Fingerprint, IdentityPublicKey, KemPublicKey};
use lattice_protocol::ClientId;

use crate::PeerError;

/// Durable storage of pinned identity keys, one per peer.
///
/// The first identity key seen for a peer is pinned; a later, different key is reported as a key
/// change ([`crate::PeerEvent::KeyChanged`]) and not trusted until the caller accepts it, which
/// pins the new key. Methods are synchronous and expected to be quick (a map or one SQLite row).
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// The pinned identity key of `peer`, if any.
    ///
    /// # Errors
    /// [`PeerError::KeyStore`] if the storage fails.
    fn pinned(&self, peer: &ClientId) -> Result<Option<IdentityPublicKey>, PeerError>;

    /// Pins `key` for `peer`, replacing any earlier key.
    ///
    /// # Errors
    /// [`PeerError::KeyStore`] if the storage fails.
    fn pin(&self, peer: &ClientId, key: &IdentityPublicKey) -> Result<(), PeerError>;
}

/// A [`KeyStore`] in memory: pins last as long as the process.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    // std Mutex: held only for a map lookup or insert, never across an await.
    pins: Mutex<HashMap<ClientId, IdentityPublicKey>>,
}

impl KeyStore for MemoryKeyStore {
    fn pinned(&self, peer: &ClientId) -> Result<Option<IdentityPublicKey>, PeerError> {
        let pins = self
            .pins
            .lock()
            .map_err(|_| PeerError::KeyStore("lock poisoned".into()))?;
        Ok(pins.get(peer).copied())
    }

    fn pin(&self, peer: &ClientId, key: &IdentityPublicKey) -> Result<(), PeerError> {
        let mut pins = self
            .pins
            .lock()
            .map_err(|_| PeerError::KeyStore("lock poisoned".into()))?;
        pins.insert(peer.clone(), *key);
        Ok(())
    }
}

/// A peer's keys, as published by the server and checked by us.
#[derive(Debug, Clone)]
pub struct PeerKey {
    /// The peer.
    pub peer_id: ClientId,
    /// Its ML-KEM-768 key, the one messages are sealed to.
    pub kem: KemPublicKey,
    /// Its identity key, for a Lattice peer (`keySignature` verified, pinned). `None` for an original
    /// client, whose messages are unauthenticated.
    pub identity: Option<IdentityPublicKey>,
}

impl PeerKey {
    /// Whether the peer proved an identity (messages to and from it are `lattice-v1`).
    pub fn is_verified(&self) -> bool {
        self.identity.is_some()
    }

    /// The fingerprint of the identity key, to compare out of band.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.identity.as_ref().map(IdentityPublicKey::fingerprint)
    }
}

/// Peers' keys fetched from the server, for sending and checking, at most `capacity` of them: any
/// registered peer that messages us adds one (an ML-KEM key is over a kilobyte), so the cache is
/// bounded and forgets the entry stored longest ago. A forgotten key is simply fetched again; the
/// pinned identity keys live in the [`KeyStore`], not here.
#[derive(Debug)]
pub(crate) struct KeyCache {
    capacity: usize,
    order: VecDeque<ClientId>,
    map: HashMap<ClientId, PeerKey>,
}

impl KeyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            map: HashMap::new(),
        }
    }

    pub(crate) fn get(&self, peer: &ClientId) -> Option<&PeerKey> {
        self.map.get(peer)
    }

    pub(crate) fn insert(&mut self, key: PeerKey) {
        let peer = key.peer_id.clone();
        if self.map.insert(peer.clone(), key).is_some() {
            return;
        }
        self.order.push_back(peer);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub(crate) fn remove(&mut self, peer: &ClientId) {
        if self.map.remove(peer).is_some() {
            self.order.retain(|p| p != peer);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        debug_assert_eq!(self.map.len(), self.order.len());
        self.map.len()
    }
}

/// Senders found to have no identity key (the server answered `PEER_NOT_FOUND`, or presented
/// them without one), remembered for `ttl` so that a flood of `lattice-v1` messages in such a
/// sender's name costs one key request per `ttl`, not one per message. At most `capacity`
/// senders (the oldest finding is forgotten first).
#[derive(Debug)]
pub(crate) struct Keyless {
    ttl: std::time::Duration,
    capacity: usize,
    order: VecDeque<ClientId>,
    map: HashMap<ClientId, tokio::time::Instant>,
}

impl Keyless {
    pub(crate) fn new(ttl: std::time::Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            order: VecDeque::new(),
            map: HashMap::new(),
        }
    }

    /// Whether `peer` was found keyless less than `ttl` before `now`.
    pub(crate) fn contains(&self, peer: &ClientId, now: tokio::time::Instant) -> bool {
        self.map
            .get(peer)
            .is_some_and(|&found| now.saturating_duration_since(found) < self.ttl)
    }

    pub(crate) fn insert(&mut self, peer: &ClientId, now: tokio::time::Instant) {
        if self.map.insert(peer.clone(), now).is_some() {
            self.order.retain(|p| p != peer);
        }
        self.order.push_back(peer.clone());
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub(crate) fn remove(&mut self, peer: &ClientId) {
        if self.map.remove(peer).is_some() {
            self.order.retain(|p| p != peer);
        }
    }
}

/// What TOFU says about a presented identity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trust {
    /// No key was pinned; this one now is.
    FirstUse,
    /// The pinned key.
    Pinned,
    /// A different key than the pinned one.
    Changed {
        /// The pinned key.
        old: IdentityPublicKey,
    },
}

/// Applies trust on first use: pins `key` if nothing is pinned for `peer`.
pub(crate) fn tofu(
    store: &dyn KeyStore,
    peer: &ClientId,
    key: &IdentityPublicKey,
) -> Result<Trust, PeerError> {
    match store.pinned(peer)? {
        None => {
            store.pin(peer, key)?;
            Ok(Trust::FirstUse)
        }
        Some(old) if old == *key => Ok(Trust::Pinned),
        Some(old) => Ok(Trust::Changed { old }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_crypto::IdentityKeyPair;

    fn key(id: &str) -> PeerKey {
        let identity = lattice_crypto::Identity::from_parts(
            IdentityKeyPair::from_secret_bytes(&[3; 32]),
            lattice_crypto::KemKeyPair::from_seed(&[4; lattice_crypto::KEM_SEED_LEN]),
        );
        PeerKey {
            peer_id: ClientId::new(id).unwrap(),
            kem: identity.kem_public_key().clone(),
            identity: None,
        }
    }

    #[test]
    fn the_key_cache_is_bounded_and_forgets_the_oldest_entry() {
        let mut cache = KeyCache::new(2);
        let c = |s: &str| ClientId::new(s).unwrap();
        cache.insert(key("a"));
        cache.insert(key("b"));
        cache.insert(key("a")); // a refresh, not a new entry
        assert_eq!(cache.len(), 2);
        cache.insert(key("c"));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&c("a")).is_none(), "the oldest entry went");
        assert!(cache.get(&c("b")).is_some() && cache.get(&c("c")).is_some());
        cache.remove(&c("b"));
        cache.remove(&c("nobody"));
        assert_eq!(cache.len(), 1);
        for i in 0..100 {
            cache.insert(key(&format!("p{i}")));
        }
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn tofu_pins_then_detects_change() {
        let store = MemoryKeyStore::default();
        let bob = ClientId::new("bob").unwrap();
        let k1 = IdentityKeyPair::from_secret_bytes(&[1; 32]).public_key();
        let k2 = IdentityKeyPair::from_secret_bytes(&[2; 32]).public_key();
        assert_eq!(tofu(&store, &bob, &k1).unwrap(), Trust::FirstUse);
        assert_eq!(tofu(&store, &bob, &k1).unwrap(), Trust::Pinned);
        assert_eq!(tofu(&store, &bob, &k2).unwrap(), Trust::Changed { old: k1 });
        // Not re-pinned by the change.
        assert_eq!(store.pinned(&bob).unwrap(), Some(k1));
        store.pin(&bob, &k2).unwrap();
        assert_eq!(tofu(&store, &bob, &k2).unwrap(), Trust::Pinned);
    }

    #[tokio::test(start_paused = true)]
    async fn a_keyless_finding_expires_and_is_bounded() {
        let c = |s: &str| ClientId::new(s).unwrap();
        let mut k = Keyless::new(std::time::Duration::from_secs(30), 2);
        let t0 = tokio::time::Instant::now();
        k.insert(&c("ghost"), t0);
        assert!(k.contains(&c("ghost"), t0));
        tokio::time::advance(std::time::Duration::from_secs(29)).await;
        assert!(k.contains(&c("ghost"), tokio::time::Instant::now()));
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(!k.contains(&c("ghost"), tokio::time::Instant::now()));
        let now = tokio::time::Instant::now();
        k.insert(&c("a"), now);
        k.insert(&c("b"), now);
        k.insert(&c("a"), now);
        k.insert(&c("d"), now);
        assert!(k.contains(&c("a"), now) && k.contains(&c("d"), now));
        assert!(!k.contains(&c("b"), now), "the oldest finding went");
        k.remove(&c("a"));
        assert!(!k.contains(&c("a"), now));
    }
}
