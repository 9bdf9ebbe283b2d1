//! Forward secrecy and post-compromise security, checked against what the store holds: every
//! "cannot" is paired with a "could" on a copy of the store taken earlier, so the test fails if
//! the secrets were never there or are still there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_mls::limits::MAX_PAST_EPOCHS;
use lattice_mls::MlsError;
use support::{commit_everywhere, make_group, open_snapshot, texts, Device, Pins};

#[test]
fn a_read_message_key_is_gone_from_the_store() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);

    let ct = alice.c().encrypt(&gid, b"read once").unwrap();
    let before_reading = bob.snapshot();
    assert_eq!(
        texts(&bob.c().process(&ct, &pins).unwrap()),
        vec!["read once"]
    );

    // The store as written after reading no longer holds the message's key...
    bob.reopen();
    assert!(matches!(
        bob.c().process(&ct, &pins),
        Err(MlsError::Decrypt)
    ));
    // ...while the copy of the store taken just before reading did.
    let mut copy = open_snapshot(&before_reading);
    assert_eq!(texts(&copy.process(&ct, &pins).unwrap()), vec!["read once"]);
}

#[test]
fn past_epoch_secrets_are_deleted_after_the_window() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);

    // A message sent in this epoch but delivered late.
    let late = alice.c().encrypt(&gid, b"late").unwrap();
    let mut snapshots = Vec::new();
    for _ in 0..=MAX_PAST_EPOCHS {
        let out = alice.c().self_update(&gid).unwrap();
        commit_everywhere(&mut alice, &out, &mut [&mut bob], &pins);
        snapshots.push(bob.snapshot());
    }
    // Within the window the old epoch's secrets are kept (the copy after one Commit opens it)...
    let mut within = open_snapshot(&snapshots[0]);
    assert_eq!(texts(&within.process(&late, &pins).unwrap()), vec!["late"]);
    // ...beyond it they are gone from the store.
    bob.reopen();
    assert!(matches!(
        bob.c().process(&late, &pins),
        Err(MlsError::Decrypt)
    ));
}

#[test]
fn a_stolen_state_cannot_read_after_the_victims_self_update() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let mut carol = Device::new("carol", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob, &mut carol], &pins);

    // The attacker copies bob's whole store (signature key, leaf secrets, epoch secrets).
    let stolen = bob.snapshot();
    let mut thief = open_snapshot(&stolen);

    // Until bob heals, the copy reads the group: the compromise is real.
    let m1 = alice.c().encrypt(&gid, b"before healing").unwrap();
    assert_eq!(
        texts(&thief.process(&m1, &pins).unwrap()),
        vec!["before healing"]
    );
    bob.c().process(&m1, &pins).unwrap();
    carol.c().process(&m1, &pins).unwrap();

    // bob's self-update: a fresh leaf key and path secrets encrypted to the others' keys.
    let heal = bob.c().self_update(&gid).unwrap();
    commit_everywhere(&mut bob, &heal, &mut [&mut alice, &mut carol], &pins);

    let m2 = alice.c().encrypt(&gid, b"after healing").unwrap();
    assert!(
        thief.process(&heal.commit, &pins).is_err(),
        "the copy cannot follow the update"
    );
    assert!(
        thief.process(&m2, &pins).is_err(),
        "the copy cannot read the new epoch"
    );
    assert_eq!(
        texts(&carol.c().process(&m2, &pins).unwrap()),
        vec!["after healing"]
    );
    assert_eq!(
        texts(&bob.c().process(&m2, &pins).unwrap()),
        vec!["after healing"]
    );
}
