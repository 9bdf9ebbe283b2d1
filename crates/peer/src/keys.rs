//! Peer keys: the [`KeyStore`] trait that pins identity keys on first use (TOFU), its
//! implementations [`MemoryKeyStore`] (in memory) and [`FileKeyStore`] (a file next to the
//! identity file, so pins survive restarts), and [`PeerKey`], a peer's keys as fetched from the
//! server.
//!
//! Both stores are bounded ([`crate::defaults::KEY_STORE_MAX_PINS`]): every sender with a valid
//! identity may add a pin. When full, a new pin evicts the pin made (or last replaced) longest ago
//! among peers the user never talked to ([`KeyStore::mark_contact`]: the user sent them a message or
//! accepted their key change); a contact's pin is never evicted. If every pin is a contact's, a new
//! pin is refused ([`PeerError::KeyStore`]: a message from that sender is then refused as transient).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;

use lattice_crypto::{Fingerprint, IdentityPublicKey, KemPublicKey};
use lattice_protocol::{ClientId, SignedDeviceList};

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

    /// Records that the user talked to `peer` (sent it a message, or accepted its key change), so
    /// that a bounded store never evicts its pin. Called for pinned peers only. The default does
    /// nothing: right for a store that never evicts.
    ///
    /// # Errors
    /// [`PeerError::KeyStore`] if the storage fails.
    fn mark_contact(&self, peer: &ClientId) -> Result<(), PeerError> {
        let _ = peer;
        Ok(())
    }

    /// Every pin, contacts first, to hand over to a newly linked device of this id (so its first
    /// message to a contact is no new trust on first use). The default has none to give.
    ///
    /// # Errors
    /// [`PeerError::KeyStore`] if the storage fails.
    fn pins(&self) -> Result<Vec<(ClientId, IdentityPublicKey)>, PeerError> {
        Ok(Vec::new())
    }

    /// The last device list of our own id that this device (the one holding the identity key)
    /// signed and published. Kept so that the next list is never based on an older one a
    /// server might serve (which could still name a removed device), across restarts too.
    /// The default keeps none (then only this run's list is remembered, in memory).
    ///
    /// # Errors
    /// [`PeerError::KeyStore`] if the storage fails.
    fn own_device_list(&self) -> Result<Option<SignedDeviceList>, PeerError> {
        Ok(None)
    }

    /// Keeps `list` as [`KeyStore::own_device_list`] (called after it was published). The
    /// default keeps nothing.
    ///
    /// # Errors
    /// [`PeerError::KeyStore`] if the storage fails.
    fn keep_own_device_list(&self, list: &SignedDeviceList) -> Result<(), PeerError> {
        let _ = list;
        Ok(())
    }
}

/// One pin.
#[derive(Debug, Clone)]
struct Pin {
    key: IdentityPublicKey,
    /// The user talked to this peer: never evicted.
    contact: bool,
    /// When it was pinned (or last re-pinned), in pin order: the eviction order.
    seq: u64,
}

/// The pins of either store, bounded as described in the module docs.
#[derive(Debug, Clone)]
struct Pins {
    capacity: usize,
    seq: u64,
    map: HashMap<ClientId, Pin>,
}

impl Pins {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            seq: 0,
            map: HashMap::new(),
        }
    }

    fn get(&self, peer: &ClientId) -> Option<IdentityPublicKey> {
        self.map.get(peer).map(|p| p.key)
    }

    fn pin(&mut self, peer: &ClientId, key: &IdentityPublicKey) -> Result<(), PeerError> {
        self.seq += 1;
        let seq = self.seq;
        if let Some(p) = self.map.get_mut(peer) {
            p.key = *key;
            p.seq = seq;
            return Ok(());
        }
        if self.map.len() >= self.capacity {
            let victim = self
                .map
                .iter()
                .filter(|(_, p)| !p.contact)
                .min_by_key(|(_, p)| p.seq)
                .map(|(id, _)| id.clone())
                .ok_or_else(|| {
                    PeerError::KeyStore(format!(
                        "all {} pins are contacts'; not pinning another peer",
                        self.capacity
                    ))
                })?;
            self.map.remove(&victim);
        }
        self.map.insert(
            peer.clone(),
            Pin {
                key: *key,
                contact: false,
                seq,
            },
        );
        Ok(())
    }

    /// Every pin, contacts first, then the most recently pinned.
    fn all(&self) -> Vec<(ClientId, IdentityPublicKey)> {
        let mut v: Vec<_> = self.map.iter().collect();
        v.sort_by_key(|(_, p)| (!p.contact, std::cmp::Reverse(p.seq)));
        v.into_iter().map(|(id, p)| (id.clone(), p.key)).collect()
    }

    /// Marks `peer` a contact; whether that changed anything.
    fn mark_contact(&mut self, peer: &ClientId) -> bool {
        match self.map.get_mut(peer) {
            Some(p) if !p.contact => {
                p.contact = true;
                true
            }
            _ => false,
        }
    }
}

/// A [`KeyStore`] in memory: pins last as long as the process. Bounded
/// ([`crate::defaults::KEY_STORE_MAX_PINS`], contacts never evicted; see the module docs).
#[derive(Debug)]
pub struct MemoryKeyStore {
    // std Mutex: held only for a map lookup or insert, never across an await.
    pins: Mutex<Pins>,
    // std Mutex: a clone in or out.
    own_list: Mutex<Option<SignedDeviceList>>,
}

impl Default for MemoryKeyStore {
    fn default() -> Self {
        Self::with_capacity(crate::defaults::KEY_STORE_MAX_PINS)
    }
}

impl MemoryKeyStore {
    /// A store of at most `capacity` pins (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            pins: Mutex::new(Pins::new(capacity)),
            own_list: Mutex::new(None),
        }
    }
}

impl KeyStore for MemoryKeyStore {
    fn pinned(&self, peer: &ClientId) -> Result<Option<IdentityPublicKey>, PeerError> {
        Ok(crate::sync::lock(&self.pins).get(peer))
    }

    fn pin(&self, peer: &ClientId, key: &IdentityPublicKey) -> Result<(), PeerError> {
        crate::sync::lock(&self.pins).pin(peer, key)
    }

    fn pins(&self) -> Result<Vec<(ClientId, IdentityPublicKey)>, PeerError> {
        Ok(crate::sync::lock(&self.pins).all())
    }

    fn mark_contact(&self, peer: &ClientId) -> Result<(), PeerError> {
        crate::sync::lock(&self.pins).mark_contact(peer);
        Ok(())
    }

    fn own_device_list(&self) -> Result<Option<SignedDeviceList>, PeerError> {
        Ok(crate::sync::lock(&self.own_list).clone())
    }

    fn keep_own_device_list(&self, list: &SignedDeviceList) -> Result<(), PeerError> {
        *crate::sync::lock(&self.own_list) = Some(list.clone());
        Ok(())
    }
}

/// The first line of a [`FileKeyStore`] file.
const PINS_HEADER: &str = "# lattice pinned identity keys v1";

/// A [`KeyStore`] in a file, so that pins survive restarts: a key change after a restart is caught
/// exactly like one while running. `lattice-chat` and the echo bot keep it next to their identity
/// file ([`crate::identity_file::key_store_path`]).
///
/// The file is small text, one pin a line (`<client id> <identity key, base64> contact|seen`,
/// oldest pin first), readable only by its owner (0600, in a 0700 directory when created). Every
/// change rewrites it atomically (a temporary file, synced, renamed over it), so a crash leaves
/// the old or the new pins, never half of them. Bounded like [`MemoryKeyStore`].
///
/// The last device list this id's primary device signed ([`KeyStore::own_device_list`]) is kept
/// beside it, in `<path>.devicelist` (JSON, written the same way).
#[derive(Debug)]
pub struct FileKeyStore {
    path: PathBuf,
    // std Mutex: held for a lookup, or for a change and the file write (milliseconds, never
    // across an await).
    pins: Mutex<Pins>,
    // std Mutex: as `pins`.
    own_list: Mutex<Option<SignedDeviceList>>,
}

/// Where a [`FileKeyStore`] at `path` keeps our own last signed device list.
fn own_list_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".devicelist");
    PathBuf::from(p)
}

impl FileKeyStore {
    /// Opens the store at `path` (an absent file is an empty store, created on the first pin),
    /// holding at most [`crate::defaults::KEY_STORE_MAX_PINS`] pins.
    ///
    /// # Errors
    /// [`PeerError::KeyStore`] if the file cannot be read or is not a pin file (rather than start
    /// with no pins and trust whatever key the server hands out next).
    pub fn open(path: &Path) -> Result<Self, PeerError> {
        Self::with_capacity(path, crate::defaults::KEY_STORE_MAX_PINS)
    }

    /// [`FileKeyStore::open`] with room for `capacity` pins (at least one). A file holding more
    /// is kept whole; new pins then evict until it fits.
    ///
    /// # Errors
    /// As [`FileKeyStore::open`].
    pub fn with_capacity(path: &Path, capacity: usize) -> Result<Self, PeerError> {
        let mut pins = Pins::new(capacity);
        match fs::read_to_string(path) {
            Ok(text) => parse_pins(&text, &mut pins)
                .map_err(|e| PeerError::KeyStore(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PeerError::KeyStore(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        }
        let list_path = own_list_path(path);
        let own_list = match fs::read(&list_path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                PeerError::KeyStore(format!("{}: not a device list: {e}", list_path.display()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(PeerError::KeyStore(format!(
                    "cannot read {}: {e}",
                    list_path.display()
                )))
            }
        };
        Ok(Self {
            path: path.to_owned(),
            pins: Mutex::new(pins),
            own_list: Mutex::new(own_list),
        })
    }

    /// Where the pins are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `change` to a copy of the pins, writes the copy, and only then keeps it: a failed
    /// write changes nothing.
    fn update(
        &self,
        change: impl FnOnce(&mut Pins) -> Result<bool, PeerError>,
    ) -> Result<(), PeerError> {
        let mut pins = crate::sync::lock(&self.pins);
        let mut next = pins.clone();
        if change(&mut next)? {
            write_pins(&self.path, &next)?;
            *pins = next;
        }
        Ok(())
    }
}

impl KeyStore for FileKeyStore {
    fn pinned(&self, peer: &ClientId) -> Result<Option<IdentityPublicKey>, PeerError> {
        Ok(crate::sync::lock(&self.pins).get(peer))
    }

    fn pin(&self, peer: &ClientId, key: &IdentityPublicKey) -> Result<(), PeerError> {
        self.update(|p| p.pin(peer, key).map(|()| true))
    }

    fn pins(&self) -> Result<Vec<(ClientId, IdentityPublicKey)>, PeerError> {
        Ok(crate::sync::lock(&self.pins).all())
    }

    fn mark_contact(&self, peer: &ClientId) -> Result<(), PeerError> {
        self.update(|p| Ok(p.mark_contact(peer)))
    }

    fn own_device_list(&self) -> Result<Option<SignedDeviceList>, PeerError> {
        Ok(crate::sync::lock(&self.own_list).clone())
    }

    fn keep_own_device_list(&self, list: &SignedDeviceList) -> Result<(), PeerError> {
        let mut own = crate::sync::lock(&self.own_list);
        let text = serde_json::to_vec(list).map_err(|e| PeerError::KeyStore(e.to_string()))?;
        write_atomically(&own_list_path(&self.path), &text)?;
        *own = Some(list.clone());
        Ok(())
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn parse_pins(text: &str, pins: &mut Pins) -> Result<(), String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, PINS_HEADER)) => {}
        _ => return Err("not a pin file (bad first line)".into()),
    }
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("line {} is not a pin", n + 1);
        let mut parts = line.split(' ');
        let (Some(id), Some(key), Some(mark), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let id = ClientId::new(id).map_err(|_| bad())?;
        let key = B64.decode(key).map_err(|_| bad())?;
        let key = IdentityPublicKey::from_bytes(&key).map_err(|_| bad())?;
        let contact = match mark {
            "contact" => true,
            "seen" => false,
            _ => return Err(bad()),
        };
        pins.seq += 1;
        pins.map.insert(
            id,
            Pin {
                key,
                contact,
                seq: pins.seq,
            },
        );
    }
    Ok(())
}

fn write_pins(path: &Path, pins: &Pins) -> Result<(), PeerError> {
    let mut sorted: Vec<(&ClientId, &Pin)> = pins.map.iter().collect();
    sorted.sort_by_key(|(_, p)| p.seq);
    let mut text = String::with_capacity(64 + sorted.len() * 72);
    text.push_str(PINS_HEADER);
    text.push('\n');
    for (id, p) in sorted {
        let mark = if p.contact { "contact" } else { "seen" };
        text.push_str(&format!("{id} {} {mark}\n", B64.encode(p.key.as_bytes())));
    }
    write_atomically(path, text.as_bytes())
}

/// Writes `bytes` to `path` owner-only through a synced temporary file renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PeerError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        PeerError::KeyStore(format!("cannot {what} {}: {e}", p.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::identity_file::create_private_dir(dir).map_err(|e| io("create", dir, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| io("replace", path, e))
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

/// A map of at most `capacity` peers that forgets the one first stored longest ago. The one
/// mechanism behind [`KeyCache`] and [`Keyless`].
#[derive(Debug)]
pub(crate) struct BoundedMap<V> {
    capacity: usize,
    order: VecDeque<ClientId>,
    map: HashMap<ClientId, V>,
}

impl<V> BoundedMap<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            map: HashMap::new(),
        }
    }

    pub(crate) fn get(&self, peer: &ClientId) -> Option<&V> {
        self.map.get(peer)
    }

    /// Stores `value` for `peer`. A peer stored before keeps its place in line unless `renew`,
    /// which makes it the newest.
    pub(crate) fn insert(&mut self, peer: ClientId, value: V, renew: bool) {
        if self.map.insert(peer.clone(), value).is_some() {
            if !renew {
                return;
            }
            self.order.retain(|p| p != &peer);
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

/// Peers' keys fetched from the server, for sending and checking, at most `capacity` of them: any
/// registered peer that messages us adds one (an ML-KEM key is over a kilobyte), so the cache is
/// bounded and forgets the entry stored longest ago. A forgotten key is simply fetched again; the
/// pinned identity keys live in the [`KeyStore`], not here.
#[derive(Debug)]
pub(crate) struct KeyCache(BoundedMap<PeerKey>);

impl KeyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self(BoundedMap::new(capacity))
    }

    pub(crate) fn get(&self, peer: &ClientId) -> Option<&PeerKey> {
        self.0.get(peer)
    }

    pub(crate) fn insert(&mut self, key: PeerKey) {
        // A re-fetched key replaces the old one in place: the cache is bounded, not an LRU.
        self.0.insert(key.peer_id.clone(), key, false);
    }

    pub(crate) fn remove(&mut self, peer: &ClientId) {
        self.0.remove(peer);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Senders found to have no identity key (the server answered `PEER_NOT_FOUND`, or presented
/// them without one), remembered for `ttl` so that a flood of `lattice-v1` messages in such a
/// sender's name costs one key request per `ttl`, not one per message. At most `capacity`
/// senders (the oldest finding is forgotten first).
#[derive(Debug)]
pub(crate) struct Keyless {
    ttl: std::time::Duration,
    found: BoundedMap<tokio::time::Instant>,
}

impl Keyless {
    pub(crate) fn new(ttl: std::time::Duration, capacity: usize) -> Self {
        Self {
            ttl,
            found: BoundedMap::new(capacity),
        }
    }

    /// Whether `peer` was found keyless less than `ttl` before `now`.
    pub(crate) fn contains(&self, peer: &ClientId, now: tokio::time::Instant) -> bool {
        self.found
            .get(peer)
            .is_some_and(|&found| now.saturating_duration_since(found) < self.ttl)
    }

    pub(crate) fn insert(&mut self, peer: &ClientId, now: tokio::time::Instant) {
        // A new finding starts a new `ttl`, and is the newest.
        self.found.insert(peer.clone(), now, true);
    }

    pub(crate) fn remove(&mut self, peer: &ClientId) {
        self.found.remove(peer);
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

    fn ik(n: u8) -> IdentityPublicKey {
        IdentityKeyPair::from_secret_bytes(&[n; 32]).public_key()
    }

    #[test]
    fn a_full_store_evicts_the_oldest_stranger_never_a_contact() {
        let c = |s: &str| ClientId::new(s).unwrap();
        let store = MemoryKeyStore::with_capacity(3);
        store.pin(&c("bob"), &ik(1)).unwrap();
        store.mark_contact(&c("bob")).unwrap();
        store.pin(&c("s1"), &ik(2)).unwrap();
        store.pin(&c("s2"), &ik(3)).unwrap();
        // A flood of strangers: each evicts the oldest stranger, never bob.
        for i in 0..50u8 {
            store.pin(&c(&format!("f{i}")), &ik(10 + i)).unwrap();
            assert_eq!(store.pinned(&c("bob")).unwrap(), Some(ik(1)));
        }
        assert_eq!(store.pinned(&c("s1")).unwrap(), None);
        assert_eq!(store.pinned(&c("f48")).unwrap(), Some(ik(58)));
        assert_eq!(store.pins.lock().unwrap().map.len(), 3);
        // All contacts: a new pin is refused rather than evicting one.
        store.mark_contact(&c("f48")).unwrap();
        store.mark_contact(&c("f49")).unwrap();
        assert!(matches!(
            store.pin(&c("new"), &ik(99)),
            Err(PeerError::KeyStore(_))
        ));
        // Re-pinning a known peer (an accepted key change) needs no room.
        store.pin(&c("bob"), &ik(2)).unwrap();
        assert_eq!(store.pinned(&c("bob")).unwrap(), Some(ik(2)));
    }

    #[test]
    fn a_file_store_keeps_pins_and_contacts_across_a_reopen() {
        let dir = tempfile_dir();
        let path = dir.join("sub").join("alice.pins");
        let c = |s: &str| ClientId::new(s).unwrap();
        {
            let store = FileKeyStore::with_capacity(&path, 2).unwrap();
            assert_eq!(store.pinned(&c("bob")).unwrap(), None);
            store.pin(&c("bob"), &ik(1)).unwrap();
            store.mark_contact(&c("bob")).unwrap();
            store.pin(&c("eve"), &ik(2)).unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let store = FileKeyStore::with_capacity(&path, 2).unwrap();
        assert_eq!(store.pinned(&c("bob")).unwrap(), Some(ik(1)));
        assert_eq!(store.pinned(&c("eve")).unwrap(), Some(ik(2)));
        // bob is still a contact after the reopen: the stranger goes.
        store.pin(&c("mallory"), &ik(3)).unwrap();
        let store = FileKeyStore::with_capacity(&path, 2).unwrap();
        assert_eq!(store.pinned(&c("bob")).unwrap(), Some(ik(1)));
        assert_eq!(store.pinned(&c("eve")).unwrap(), None);
        assert_eq!(store.pinned(&c("mallory")).unwrap(), Some(ik(3)));
        assert!(!path.with_extension("pins.tmp").exists());
        // A damaged file is an error, not an empty store.
        fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(
            FileKeyStore::open(&path),
            Err(PeerError::KeyStore(_))
        ));
        fs::write(&path, format!("{PINS_HEADER}\nbob notbase64 seen\n")).unwrap();
        assert!(matches!(
            FileKeyStore::open(&path),
            Err(PeerError::KeyStore(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!("lattice-pins-{}", uuid::Uuid::new_v4()))
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
