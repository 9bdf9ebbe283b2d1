//! Group life cycle on real SQLite files: 1:1 and five members across reopens, an offline member
//! catching up, leave and remove, rename, concurrent Commits ordered by a delivery service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_mls::{GroupEvent, MlsError};
use support::{
    cid, commit_everywhere, make_group, send_and_check, texts, DeliveryService, Device, Pins,
};

#[test]
fn one_to_one_survives_a_reopen_of_both_stores() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);

    send_and_check(&mut alice, &mut [&mut bob], &gid, &pins, "hi bob");
    send_and_check(&mut bob, &mut [&mut alice], &gid, &pins, "hi alice");
    let epoch = alice.c().epoch(&gid).unwrap();

    alice.reopen();
    bob.reopen();
    assert_eq!(alice.c().groups(), vec![gid.clone()]);
    assert_eq!(bob.c().epoch(&gid).unwrap(), epoch);
    send_and_check(&mut alice, &mut [&mut bob], &gid, &pins, "still there?");
    send_and_check(&mut bob, &mut [&mut alice], &gid, &pins, "yes");

    // A self-update after the reopen heals and both follow it.
    let out = bob.c().self_update(&gid).unwrap();
    assert_eq!(out.epoch, epoch);
    assert_eq!(
        bob.c().epoch(&gid).unwrap(),
        epoch,
        "a pending Commit is not applied yet"
    );
    let events = commit_everywhere(&mut bob, &out, &mut [&mut alice], &pins);
    assert_eq!(
        events[0].last(),
        Some(&GroupEvent::EpochChanged { epoch: epoch + 1 })
    );
    assert_eq!(alice.c().epoch(&gid).unwrap(), epoch + 1);
    assert_eq!(bob.c().epoch(&gid).unwrap(), epoch + 1);
    send_and_check(&mut alice, &mut [&mut bob], &gid, &pins, "healed");
}

#[test]
fn five_members_across_a_reopen_of_every_store() {
    let mut pins = Pins::default();
    let names = ["ann", "ben", "cat", "dan", "eve"];
    let mut d: Vec<Device> = names.iter().map(|n| Device::new(n, &mut pins)).collect();
    let (first, rest) = d.split_at_mut(1);
    let mut others: Vec<&mut Device> = rest.iter_mut().collect();
    let gid = make_group(&mut first[0], &mut others, &pins);

    // Every member sees the same five members, with the pinned identity keys.
    for dev in d.iter_mut() {
        let members = dev.c().members(&gid).unwrap();
        assert_eq!(members.len(), 5);
        for m in &members {
            assert_eq!(
                Some(&m.identity.identity_key),
                pins.0.get(&m.identity.client_id)
            );
        }
    }

    let broadcast = |d: &mut Vec<Device>, from: usize, text: &str| {
        let (a, b) = d.split_at_mut(from);
        let (sender, c) = b.split_at_mut(1);
        let mut to: Vec<&mut Device> = a.iter_mut().chain(c.iter_mut()).collect();
        send_and_check(&mut sender[0], &mut to, &gid, &pins, text);
    };
    for (i, name) in names.iter().enumerate() {
        broadcast(&mut d, i, &format!("hello from {name}"));
    }
    for dev in d.iter_mut() {
        dev.reopen();
    }
    for (i, name) in names.iter().enumerate() {
        broadcast(&mut d, i, &format!("after reopen from {name}"));
    }

    // cat updates her leaf, then everyone follows a rename, across another reopen.
    let out = d[2].c().self_update(&gid).unwrap();
    d[2].c().confirm_commit(&gid).unwrap();
    for i in [0, 1, 3, 4] {
        let events = d[i].c().process(&out.commit, &pins).unwrap();
        assert!(events.contains(&GroupEvent::MemberUpdated {
            member: d[2].c().members(&gid).unwrap()[2].identity.clone()
        }));
    }
    for dev in d.iter_mut() {
        dev.reopen();
    }
    let out = d[4].c().rename(&gid, "five of us").unwrap();
    d[4].c().confirm_commit(&gid).unwrap();
    for dev in d.iter_mut().take(4) {
        let events = dev.c().process(&out.commit, &pins).unwrap();
        assert!(events.contains(&GroupEvent::Renamed {
            name: "five of us".into()
        }));
    }
    let epoch = d[0].c().epoch(&gid).unwrap();
    for dev in d.iter_mut() {
        assert_eq!(dev.c().group_name(&gid).unwrap(), "five of us");
        assert_eq!(dev.c().epoch(&gid).unwrap(), epoch);
    }
    broadcast(&mut d, 3, "renamed and healed");
}

#[test]
fn an_offline_member_catches_up_in_order() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let mut carol = Device::new("carol", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);

    // carol is offline: everything for her goes to her mailbox, in the DS's order.
    let mut mailbox: Vec<Vec<u8>> = Vec::new();
    let kp = carol.key_package_for(&mut alice, &pins);
    let add = alice.c().add_members(&gid, &[kp]).unwrap();
    commit_everywhere(&mut alice, &add, &mut [&mut bob], &pins);
    mailbox.push(add.welcome.clone().unwrap());

    let mut expected = Vec::new();
    for round in 0..3 {
        let text = format!("alice {round}");
        let ct = alice.c().encrypt(&gid, text.as_bytes()).unwrap();
        assert_eq!(
            texts(&bob.c().process(&ct, &pins).unwrap()),
            vec![text.clone()]
        );
        mailbox.push(ct);
        expected.push(text);

        let updater = if round % 2 == 0 { &mut bob } else { &mut alice };
        let out = updater.c().self_update(&gid).unwrap();
        updater.c().confirm_commit(&gid).unwrap();
        let other = if round % 2 == 0 { &mut alice } else { &mut bob };
        other.c().process(&out.commit, &pins).unwrap();
        mailbox.push(out.commit);

        let text = format!("bob {round}");
        let ct = bob.c().encrypt(&gid, text.as_bytes()).unwrap();
        assert_eq!(
            texts(&alice.c().process(&ct, &pins).unwrap()),
            vec![text.clone()]
        );
        mailbox.push(ct);
        expected.push(text);
    }
    let rename = alice.c().rename(&gid, "three").unwrap();
    commit_everywhere(&mut alice, &rename, &mut [&mut bob], &pins);
    mailbox.push(rename.commit);

    // carol comes online (after a restart) and drains her mailbox.
    carol.reopen();
    let (joined, event) = carol.c().join(&mailbox[0], &pins).unwrap();
    assert_eq!(joined, gid);
    assert!(
        matches!(event, GroupEvent::Joined { ref name, ref members } if name == "test group" && members.len() == 3)
    );
    let mut got = Vec::new();
    for msg in &mailbox[1..] {
        got.extend(texts(&carol.c().process(msg, &pins).unwrap()));
    }
    assert_eq!(got, expected);
    assert_eq!(
        carol.c().epoch(&gid).unwrap(),
        alice.c().epoch(&gid).unwrap()
    );
    assert_eq!(carol.c().group_name(&gid).unwrap(), "three");
    send_and_check(
        &mut carol,
        &mut [&mut alice, &mut bob],
        &gid,
        &pins,
        "caught up",
    );
}

#[test]
fn leave_and_remove_take_effect_for_everyone() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let mut carol = Device::new("carol", &mut pins);
    let mut dave = Device::new("dave", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob, &mut carol, &mut dave], &pins);

    // carol leaves: her proposal is queued by the others and committed by bob.
    let proposal = carol.c().leave(&gid).unwrap();
    for d in [&mut alice, &mut bob, &mut dave] {
        let events = d.c().process(&proposal, &pins).unwrap();
        assert!(
            matches!(&events[..], [GroupEvent::LeaveRequested { member }] if member.client_id == cid("carol"))
        );
    }
    let out = bob.c().commit_pending_proposals(&gid).unwrap();
    let events = commit_everywhere(&mut bob, &out, &mut [&mut alice, &mut dave], &pins);
    for e in &events {
        assert!(e.iter().any(|e| matches!(e, GroupEvent::MemberRemoved { member } if member.client_id == cid("carol"))));
    }
    assert_eq!(
        carol.c().process(&out.commit, &pins).unwrap().last(),
        Some(&GroupEvent::Removed)
    );
    assert!(carol.c().groups().is_empty());
    carol.reopen();
    assert!(
        carol.c().groups().is_empty(),
        "carol's state for the group is deleted"
    );

    // alice removes dave; dave learns it and can no longer read.
    let out = alice.c().remove_members(&gid, &[cid("dave")]).unwrap();
    let before = dave.snapshot();
    commit_everywhere(&mut alice, &out, &mut [&mut bob], &pins);
    assert_eq!(
        dave.c().process(&out.commit, &pins).unwrap().last(),
        Some(&GroupEvent::Removed)
    );
    let ct = alice.c().encrypt(&gid, b"without dave").unwrap();
    assert!(matches!(
        dave.c().process(&ct, &pins),
        Err(MlsError::UnknownGroup(_))
    ));
    // Even dave's state from before the removal cannot open it (it is a later epoch).
    let mut old_dave = support::open_snapshot(&before);
    assert!(old_dave.process(&ct, &pins).is_err());
    assert_eq!(
        texts(&bob.c().process(&ct, &pins).unwrap()),
        vec!["without dave"]
    );
    assert_eq!(alice.c().members(&gid).unwrap().len(), 2);
    assert!(matches!(
        alice.c().remove_members(&gid, &[cid("dave")]),
        Err(MlsError::NotAMember(_))
    ));
}

#[test]
fn concurrent_commits_one_wins_and_the_loser_converges() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let mut carol = Device::new("carol", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob, &mut carol], &pins);
    let mut ds = DeliveryService::default();
    let epoch = alice.c().epoch(&gid).unwrap();

    // alice and bob both commit in the same epoch; the DS sees bob's first.
    let from_alice = alice.c().rename(&gid, "alice's name").unwrap();
    let from_bob = bob.c().self_update(&gid).unwrap();
    assert_eq!(from_alice.epoch, epoch);
    assert_eq!(from_bob.epoch, epoch);
    assert!(ds.submit(&from_bob));
    assert!(
        !ds.submit(&from_alice),
        "the second Commit of an epoch is refused"
    );

    bob.c().confirm_commit(&gid).unwrap();
    carol.c().process(&from_bob.commit, &pins).unwrap();
    // alice must settle her own Commit first, explicitly.
    assert!(matches!(
        alice.c().process(&from_bob.commit, &pins),
        Err(MlsError::PendingCommit(_))
    ));
    assert!(matches!(
        alice.c().encrypt(&gid, b"x"),
        Err(MlsError::PendingCommit(_))
    ));
    alice.c().discard_commit(&gid).unwrap();
    alice.c().process(&from_bob.commit, &pins).unwrap();
    // A Commit that lost its epoch is stale for everyone who applied the winner.
    assert!(matches!(
        carol.c().process(&from_alice.commit, &pins),
        Err(MlsError::StaleEpoch { .. })
    ));

    // alice retries in the new epoch and wins it.
    let retry = alice.c().rename(&gid, "alice's name").unwrap();
    assert!(ds.submit(&retry));
    commit_everywhere(&mut alice, &retry, &mut [&mut bob, &mut carol], &pins);
    for d in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(d.c().epoch(&gid).unwrap(), epoch + 2);
        assert_eq!(d.c().group_name(&gid).unwrap(), "alice's name");
    }
    send_and_check(&mut alice, &mut [&mut bob, &mut carol], &gid, &pins, "one");
    send_and_check(
        &mut bob,
        &mut [&mut alice, &mut carol],
        &gid,
        &pins,
        "history",
    );
    send_and_check(
        &mut carol,
        &mut [&mut alice, &mut bob],
        &gid,
        &pins,
        "no fork",
    );
}

#[test]
fn key_packages_come_in_bounded_batches_and_a_last_resort() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let batch = bob.c().key_packages(3).unwrap();
    assert_eq!(batch.len(), 3);
    for kp in &batch {
        let v = alice.c().validate_key_package(kp, &pins).unwrap();
        assert_eq!(v.identity().client_id, cid("bob"));
        assert!(!v.is_last_resort());
    }
    let last = bob.c().last_resort_key_package().unwrap();
    assert!(alice
        .c()
        .validate_key_package(&last, &pins)
        .unwrap()
        .is_last_resort());
    assert!(matches!(
        bob.c()
            .key_packages(lattice_mls::limits::MAX_KEY_PACKAGE_BATCH + 1),
        Err(MlsError::TooLarge { .. })
    ));

    // The last-resort KeyPackage survives being used, so two groups can welcome bob with it.
    let kp = alice.c().validate_key_package(&last, &pins).unwrap();
    for name in ["one", "two"] {
        let gid = alice.c().create_group(name).unwrap();
        let out = alice
            .c()
            .add_members(&gid, std::slice::from_ref(&kp))
            .unwrap();
        alice.c().confirm_commit(&gid).unwrap();
        let (joined, _) = bob.c().join(&out.welcome.unwrap(), &pins).unwrap();
        assert_eq!(joined, gid);
    }
    assert_eq!(bob.c().groups().len(), 2);
}

#[test]
fn a_group_is_bounded_at_max_group_members() {
    use lattice_mls::limits::MAX_GROUP_MEMBERS;
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let gid = alice.c().create_group("big").unwrap();
    let mut others: Vec<Device> = (1..=MAX_GROUP_MEMBERS)
        .map(|i| Device::new(&format!("m{i}"), &mut pins))
        .collect();
    let mut kps: Vec<_> = others
        .iter_mut()
        .map(|d| d.key_package_for(&mut alice, &pins))
        .collect();
    let one_too_many = kps.pop().unwrap();
    // Filling the group to exactly the limit works...
    let out = alice.c().add_members(&gid, &kps).unwrap();
    alice.c().confirm_commit(&gid).unwrap();
    assert_eq!(alice.c().members(&gid).unwrap().len(), MAX_GROUP_MEMBERS);
    // ...and one more is refused before any Commit is made.
    assert!(matches!(
        alice.c().add_members(&gid, &[one_too_many]),
        Err(MlsError::GroupFull { got, max }) if got == MAX_GROUP_MEMBERS + 1 && max == MAX_GROUP_MEMBERS
    ));
    assert!(!alice.c().has_pending_commit(&gid).unwrap());
    // A member at the limit joins from the Welcome.
    let (joined, _) = others[0].c().join(&out.welcome.unwrap(), &pins).unwrap();
    assert_eq!(joined, gid);
}

#[test]
fn a_mailbox_drain_in_one_batch_keeps_each_outcome() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);

    let m1 = alice.c().encrypt(&gid, b"one").unwrap();
    let update = alice.c().self_update(&gid).unwrap();
    alice.c().confirm_commit(&gid).unwrap();
    let m2 = alice.c().encrypt(&gid, b"two").unwrap();
    let mut tampered = m2.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let m3 = alice.c().encrypt(&gid, b"three").unwrap();

    // Out of order (m2 before the Commit), a tampered copy, garbage: each refused on its own.
    let batch: Vec<&[u8]> = vec![&m1, &m2, &update.commit, &tampered, b"junk", &m2, &m3];
    let results = bob.c().process_batch(batch, &pins).unwrap();
    assert_eq!(results.len(), 7);
    assert_eq!(texts(results[0].as_ref().unwrap()), vec!["one"]);
    assert!(matches!(results[1], Err(MlsError::FutureEpoch { .. })));
    assert!(results[2].is_ok());
    assert!(matches!(results[3], Err(MlsError::Decrypt)));
    assert!(matches!(results[4], Err(MlsError::Malformed { .. })));
    assert_eq!(texts(results[5].as_ref().unwrap()), vec!["two"]);
    assert_eq!(texts(results[6].as_ref().unwrap()), vec!["three"]);

    // The batch was written: after a reopen bob is in the new epoch and the keys are used up.
    bob.reopen();
    assert_eq!(bob.c().epoch(&gid).unwrap(), alice.c().epoch(&gid).unwrap());
    let again = bob.c().process_batch([&m2[..], &m3[..]], &pins).unwrap();
    assert!(again.iter().all(|r| matches!(r, Err(MlsError::Decrypt))));
    send_and_check(&mut bob, &mut [&mut alice], &gid, &pins, "after the batch");
}

/// A delivery (sender, message id) processed with `process_once` / `join_once` is remembered in
/// the store, in the same transaction as its effect: the same delivery after a reopen is
/// `Duplicate` and changes nothing, a new delivery of the same bytes is what MLS itself refuses,
/// and a delivery that failed is not remembered (it may be tried again).
#[test]
fn a_delivery_processed_once_is_refused_again_after_a_reopen() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let gid = alice.c().create_group("g").unwrap();
    let kp = bob.key_package_for(&mut alice, &pins);
    let out = alice.c().add_members(&gid, &[kp]).unwrap();
    alice.c().confirm_commit(&gid).unwrap();
    let welcome = out.welcome.unwrap();
    let (joined, _) = bob.c().join_once("alice", "w1", &welcome, &pins).unwrap();
    assert_eq!(joined, gid);

    let ct = alice.c().encrypt(&gid, b"once").unwrap();
    // A failure is not remembered: garbage under a message id, then the real bytes under it.
    let mut bad = ct.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        bob.c().process_once("alice", "m1", &bad, &pins),
        Err(MlsError::Decrypt)
    ));
    let events = bob.c().process_once("alice", "m1", &ct, &pins).unwrap();
    assert_eq!(texts(&events), ["once"]);

    bob.reopen();
    let epoch = bob.c().epoch(&gid).unwrap();
    assert!(matches!(
        bob.c().process_once("alice", "m1", &ct, &pins),
        Err(MlsError::Duplicate { sender, message_id }) if sender == "alice" && message_id == "m1"
    ));
    assert!(matches!(
        bob.c().join_once("alice", "w1", &welcome, &pins),
        Err(MlsError::Duplicate { .. })
    ));
    // Another sender may use the same message id.
    let ct2 = alice.c().encrypt(&gid, b"other").unwrap();
    assert_eq!(
        texts(&bob.c().process_once("carol", "m1", &ct2, &pins).unwrap()),
        ["other"]
    );
    assert_eq!(bob.c().epoch(&gid).unwrap(), epoch);
    send_and_check(&mut alice, &mut [&mut bob], &gid, &pins, "goes on");
}

/// `forget_group` deletes a group's state locally and durably; `member_signature_keys` tells two
/// MLS clients of one id apart (a reinstall makes a new signature key).
#[test]
fn a_forgotten_group_is_gone_after_a_reopen_and_a_new_client_has_a_new_leaf_key() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let g1 = make_group(&mut alice, &mut [&mut bob], &pins);
    let bob_key = |d: &mut Device, g| {
        d.c()
            .member_signature_keys(g)
            .unwrap()
            .into_iter()
            .find(|(c, _)| c.as_str() == "bob")
            .unwrap()
            .1
    };
    let old = bob_key(&mut alice, &g1);
    assert_eq!(bob_key(&mut bob, &g1), old);

    // bob again, as a new MLS client of the same identity (his state was lost).
    let same = lattice_crypto::IdentityKeyPair::from_secret_bytes(&bob.identity.secret_bytes());
    let mut bob2 = Device::with_identity("bob", same);
    let g2 = make_group(&mut alice, &mut [&mut bob2], &pins);
    assert_ne!(bob_key(&mut alice, &g2), old);

    alice.c().forget_group(&g1).unwrap();
    assert!(matches!(
        alice.c().epoch(&g1),
        Err(MlsError::UnknownGroup(_))
    ));
    alice.reopen();
    assert_eq!(alice.c().groups(), vec![g2.clone()]);
    send_and_check(&mut alice, &mut [&mut bob2], &g2, &pins, "new leaf");
}

/// One device of a member removed by its leaf (what a removed linked device gets): the
/// member's other leaf stays and reads, the removed one is out and its state from before
/// cannot open what is sent after; the Commit's leaf list names the leaves that stay. A client
/// cannot remove its own leaf this way, nor a leaf that is not there.
#[test]
fn one_leaf_of_a_member_is_removed_and_the_others_stay() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let secret = alice.identity.secret_bytes();
    let mut laptop = Device::with_identity(
        "alice",
        lattice_crypto::IdentityKeyPair::from_secret_bytes(&secret),
    );
    let mut bob = Device::new("bob", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut laptop, &mut bob], &pins);
    assert_eq!(alice.c().members(&gid).unwrap().len(), 3);
    let own = alice
        .c()
        .members(&gid)
        .unwrap()
        .into_iter()
        .map(|m| m.leaf_index)
        .min()
        .unwrap();
    let laptop_leaf = laptop.c().members(&gid).unwrap()[1].leaf_index;
    assert!(matches!(
        alice.c().remove_leaves(&gid, &[own]),
        Err(MlsError::InvalidLeaf(_))
    ));
    assert!(matches!(
        alice.c().remove_leaves(&gid, &[77]),
        Err(MlsError::InvalidLeaf(_))
    ));
    assert!(matches!(
        alice.c().remove_leaves(&gid, &[]),
        Err(MlsError::InvalidLeaf(_))
    ));

    let before = laptop.snapshot();
    let out = alice.c().remove_leaves(&gid, &[laptop_leaf]).unwrap();
    let leaves = alice.c().pending_commit_leaves(&gid).unwrap();
    let ids: Vec<&str> = leaves.iter().map(|l| l.client_id.as_str()).collect();
    assert_eq!(ids, ["alice", "bob"]);
    let events = commit_everywhere(&mut alice, &out, &mut [&mut bob], &pins);
    assert!(events[0].iter().any(
        |e| matches!(e, GroupEvent::MemberRemoved { member } if member.client_id == cid("alice"))
    ));
    assert_eq!(
        laptop.c().process(&out.commit, &pins).unwrap().last(),
        Some(&GroupEvent::Removed)
    );
    let ct = bob.c().encrypt(&gid, b"after the laptop").unwrap();
    assert_eq!(
        texts(&alice.c().process(&ct, &pins).unwrap()),
        vec!["after the laptop"]
    );
    assert!(support::open_snapshot(&before).process(&ct, &pins).is_err());
    assert_eq!(alice.c().members(&gid).unwrap().len(), 2);
}
