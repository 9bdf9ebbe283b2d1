//! One person of the MLS tests: an identity kept across restarts and an MLS state file.

use lattice_crypto::Identity;
use lattice_peer::{EventStream, MessagingPeer};
use tempfile::TempDir;

use super::{new_identity, test_config};

/// An identity kept for restarts and the directory of its MLS state.
pub struct Person {
    pub name: &'static str,
    identity: Vec<u8>,
    dir: TempDir,
}

impl Person {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            identity: new_identity().to_bytes().to_vec(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn identity(&self) -> Identity {
        Identity::from_bytes(&self.identity).unwrap()
    }

    /// Its MLS state file.
    pub fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("mls.sqlite3")
    }

    /// Deletes its MLS state (the file and its WAL companions), as a restored backup without
    /// it or a reinstall with the same identity leaves it. Call it while it is offline.
    pub fn lose_mls_state(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.state().into_os_string();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("{}: {e}", std::path::Path::new(&p).display()),
            }
        }
    }

    /// Connects with MLS on and waits until its KeyPackages are at the server.
    pub async fn online(&self, url: &str) -> (MessagingPeer, EventStream) {
        let mut config = test_config(url, self.name, self.identity());
        config.mls_state = Some(self.state());
        let p = MessagingPeer::new(config).unwrap();
        let events = p.events();
        p.connect().await.unwrap();
        assert!(p.publish_key_packages().await.unwrap() > 0);
        (p, events)
    }

    /// Connects without MLS state: an older Lattice client, or a raw device of this identity.
    pub async fn without_mls(&self, url: &str) -> (MessagingPeer, EventStream) {
        let p = MessagingPeer::new(test_config(url, self.name, self.identity())).unwrap();
        let events = p.events();
        p.connect().await.unwrap();
        (p, events)
    }
}
