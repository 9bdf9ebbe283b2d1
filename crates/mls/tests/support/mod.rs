//! Shared test helpers: people with Lattice identities, a pin directory, clients on real SQLite
//! files in temp dirs (reopenable), and a delivery service that orders Commits per epoch.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use lattice_crypto::{IdentityKeyPair, IdentityPublicKey};
use lattice_mls::{GroupEvent, GroupId, MlsClient, MlsStore, OutgoingCommit, ValidatedKeyPackage};
use lattice_protocol::ClientId;
use rand_core::OsRng;
use tempfile::TempDir;

/// The identity keys every client pins (a TOFU directory everyone agrees on).
#[derive(Debug, Default, Clone)]
pub struct Pins(pub HashMap<ClientId, IdentityPublicKey>);

impl lattice_mls::IdentityPins for Pins {
    fn pinned_identity(&self, client_id: &ClientId) -> Option<IdentityPublicKey> {
        self.0.get(client_id).copied()
    }
}

/// One device: its identity, its store file and (while open) its client.
pub struct Device {
    pub id: ClientId,
    pub identity: IdentityKeyPair,
    pub dir: TempDir,
    pub client: Option<MlsClient>,
}

pub fn cid(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

impl Device {
    /// A new device of a new identity `name`, pinned in `pins`.
    pub fn new(name: &str, pins: &mut Pins) -> Self {
        let identity = IdentityKeyPair::generate(&mut OsRng);
        pins.0.insert(cid(name), identity.public_key());
        Self::with_identity(name, identity)
    }

    /// A device claiming `name` with the given identity key (pinned or not: the caller decides).
    pub fn with_identity(name: &str, identity: IdentityKeyPair) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = MlsStore::open(dir.path().join("mls.sqlite3")).unwrap();
        let client = MlsClient::create(store, &identity, cid(name)).unwrap();
        Self {
            id: cid(name),
            identity,
            dir,
            client: Some(client),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("mls.sqlite3")
    }

    pub fn c(&mut self) -> &mut MlsClient {
        self.client.as_mut().unwrap()
    }

    /// Closes the client and opens it again from its file.
    pub fn reopen(&mut self) {
        drop(self.client.take());
        let store = MlsStore::open(self.db_path()).unwrap();
        self.client = Some(MlsClient::open(store).unwrap());
    }

    /// A byte-for-byte copy of the store as it is now (the attacker's snapshot), closed.
    pub fn snapshot(&self) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        let conn = self.client.as_ref().unwrap().connection();
        conn.execute(
            "VACUUM INTO ?1",
            [dir.path().join("mls.sqlite3").to_str().unwrap()],
        )
        .unwrap();
        dir
    }

    /// One validated KeyPackage of this device, as another client sees it.
    pub fn key_package_for(&mut self, adder: &mut Device, pins: &Pins) -> ValidatedKeyPackage {
        let kp = self.c().key_packages(1).unwrap().remove(0);
        adder.c().validate_key_package(&kp, pins).unwrap()
    }
}

/// Opens a client from a snapshot directory.
pub fn open_snapshot(dir: &TempDir) -> MlsClient {
    MlsClient::open(MlsStore::open(dir.path().join("mls.sqlite3")).unwrap()).unwrap()
}

/// A delivery service: per group, the epoch it is at and the ordered log of what it fanned out.
#[derive(Debug, Default)]
pub struct DeliveryService {
    epochs: HashMap<GroupId, u64>,
}

impl DeliveryService {
    /// Accepts `commit` if it was made in the group's current epoch (the first one wins).
    pub fn submit(&mut self, commit: &OutgoingCommit) -> bool {
        let epoch = self
            .epochs
            .entry(commit.group.clone())
            .or_insert(commit.epoch);
        if *epoch == commit.epoch {
            *epoch += 1;
            true
        } else {
            false
        }
    }
}

/// Texts of the application events.
pub fn texts(events: &[GroupEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            GroupEvent::Application { bytes, .. } => {
                Some(String::from_utf8(bytes.clone()).unwrap())
            }
            _ => None,
        })
        .collect()
}

/// Creates a group at `creator` with everyone in `others` (one add Commit, confirmed), each of
/// them joined from the Welcome. Returns the group id.
pub fn make_group(creator: &mut Device, others: &mut [&mut Device], pins: &Pins) -> GroupId {
    let gid = creator.c().create_group("test group").unwrap();
    if others.is_empty() {
        return gid;
    }
    let kps: Vec<_> = others
        .iter_mut()
        .map(|d| d.key_package_for(creator, pins))
        .collect();
    let out = creator.c().add_members(&gid, &kps).unwrap();
    creator.c().confirm_commit(&gid).unwrap();
    let welcome = out.welcome.unwrap();
    for d in others.iter_mut() {
        let (joined, _) = d.c().join(&welcome, pins).unwrap();
        assert_eq!(joined, gid);
    }
    gid
}

/// `from` sends `text`; every device in `to` reads it and must see exactly it, from `from`.
pub fn send_and_check(
    from: &mut Device,
    to: &mut [&mut Device],
    gid: &GroupId,
    pins: &Pins,
    text: &str,
) {
    let ct = from.c().encrypt(gid, text.as_bytes()).unwrap();
    for d in to.iter_mut() {
        let events = d.c().process(&ct, pins).unwrap();
        match events.as_slice() {
            [GroupEvent::Application { sender, bytes }] => {
                assert_eq!(sender.client_id, from.id);
                assert_eq!(bytes, text.as_bytes());
            }
            other => panic!("{} expected one application event, got {other:?}", d.id),
        }
    }
}

/// A Commit accepted by the DS: the author confirms, everyone in `to` processes it.
pub fn commit_everywhere(
    author: &mut Device,
    out: &OutgoingCommit,
    to: &mut [&mut Device],
    pins: &Pins,
) -> Vec<Vec<GroupEvent>> {
    author.c().confirm_commit(&out.group).unwrap();
    to.iter_mut()
        .map(|d| d.c().process(&out.commit, pins).unwrap())
        .collect()
}
