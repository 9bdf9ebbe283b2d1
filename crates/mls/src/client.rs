//! [`MlsClient`]: one device of one Lattice identity, with every group it is in.

use std::collections::BTreeMap;
use std::fmt;

use lattice_crypto::IdentityKeyPair;
use lattice_protocol::ClientId;
use openmls::prelude::{
    BasicCredential, Capabilities, ContentType, Credential, CredentialType, CredentialWithKey,
    Extension, ExtensionType, Extensions, KeyPackage, KeyPackageIn, LeafNodeIndex,
    LeafNodeParameters, Lifetime, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent, Proposal,
    ProtocolMessage, ProtocolVersion, SenderRatchetConfiguration, StagedCommit, StagedWelcome,
    UnknownExtension, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
};
use openmls::prelude::{GroupId as OmlsGroupId, RequiredCapabilitiesExtension, Sender};
use openmls_basic_credential::SignatureKeyPair;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_traits::types::SignatureScheme;
use rusqlite::Connection;
use tls_codec::{Deserialize as _, Serialize as _};

use crate::events::{GroupEvent, Member, OutgoingCommit};
use crate::group_id::GroupId;
use crate::identity::{
    claimed_identity, make_credential, verify_binding, IdentityPins, MemberIdentity,
};
use crate::limits::{
    CIPHERSUITE, GROUP_NAME_EXTENSION, KEY_PACKAGE_LIFETIME_SECS, MAXIMUM_FORWARD_DISTANCE,
    MAX_GROUP_MEMBERS, MAX_GROUP_NAME_LEN, MAX_KEY_PACKAGE_BATCH, MAX_MESSAGE_LEN, MAX_PAST_EPOCHS,
    MAX_PLAINTEXT_LEN, OUT_OF_ORDER_TOLERANCE,
};
use crate::store::{self, ClientRow, MlsStore, Provider};
use crate::MlsError;

/// A KeyPackage that passed validation: MLS checks (signature, lifetime, distinct keys), our
/// suite, and the identity binding of its credential against the caller's pins.
#[derive(Debug, Clone)]
pub struct ValidatedKeyPackage {
    key_package: KeyPackage,
    identity: MemberIdentity,
}

impl ValidatedKeyPackage {
    /// Whose KeyPackage it is.
    pub fn identity(&self) -> &MemberIdentity {
        &self.identity
    }

    /// Whether it is a last-resort KeyPackage (reusable; the directory hands it out when the
    /// owner's stock is empty).
    pub fn is_last_resort(&self) -> bool {
        self.key_package.last_resort()
    }
}

/// One device of one Lattice identity: its MLS signature key, its credential (bound to the
/// identity key), and the state of every group it is in, all kept in an [`MlsStore`].
///
/// Every method that changes state runs in one SQLite transaction; if it fails, nothing of it
/// is written and the group is reloaded from the store as it was.
pub struct MlsClient {
    store: MlsStore,
    crypto: CryptoProvider,
    client_id: ClientId,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    groups: BTreeMap<GroupId, MlsGroup>,
}

impl fmt::Debug for MlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlsClient")
            .field("client_id", &self.client_id)
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

/// The leaf capabilities we advertise: exactly what we run (set explicitly: the provider's
/// defaults advertise suites libcrux cannot do and omit ours).
fn capabilities() -> Capabilities {
    Capabilities::new(
        Some(&[ProtocolVersion::Mls10]),
        Some(&[CIPHERSUITE]),
        Some(&[
            ExtensionType::Unknown(GROUP_NAME_EXTENSION),
            ExtensionType::LastResort,
        ]),
        None,
        Some(&[CredentialType::Basic]),
    )
}

fn sender_ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAXIMUM_FORWARD_DISTANCE)
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .build()
}

fn name_extensions(name: &str) -> Result<Extensions<openmls::prelude::GroupContext>, MlsError> {
    if name.len() > MAX_GROUP_NAME_LEN {
        return Err(MlsError::GroupName("longer than MAX_GROUP_NAME_LEN bytes"));
    }
    // The name extension must be required of every member for a later rename to be valid.
    let required = RequiredCapabilitiesExtension::new(
        &[ExtensionType::Unknown(GROUP_NAME_EXTENSION)],
        &[],
        &[CredentialType::Basic],
    );
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(required),
        Extension::Unknown(
            GROUP_NAME_EXTENSION,
            UnknownExtension(name.as_bytes().to_vec()),
        ),
    ])
    .map_err(|e| MlsError::op("group name extension", e))
}

fn name_of(extensions: &Extensions<openmls::prelude::GroupContext>) -> String {
    extensions
        .unknown(GROUP_NAME_EXTENSION)
        .map(|u| String::from_utf8_lossy(&u.0).into_owned())
        .unwrap_or_default()
}

fn serialize(msg: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    msg.to_bytes().map_err(|e| MlsError::op("serialize", e))
}

fn check_group_size(got: usize) -> Result<(), MlsError> {
    if got > MAX_GROUP_MEMBERS {
        return Err(MlsError::GroupFull {
            got,
            max: MAX_GROUP_MEMBERS,
        });
    }
    Ok(())
}

fn check_len(what: &'static str, got: usize, max: usize) -> Result<(), MlsError> {
    if got > max {
        return Err(MlsError::TooLarge { what, got, max });
    }
    Ok(())
}

impl MlsClient {
    /// Makes a new client in an empty store: a fresh MLS signature key, bound to `identity` and
    /// `client_id` by a credential the identity key signs.
    ///
    /// # Errors
    /// [`MlsError::NoClient`] if the store already holds a client; store or key errors.
    pub fn create(
        store: MlsStore,
        identity: &IdentityKeyPair,
        client_id: ClientId,
    ) -> Result<Self, MlsError> {
        let id = client_id.clone();
        Self::create_with(store, client_id, |key| make_credential(identity, &id, key))
    }

    /// Makes a new client in an empty store for **linked device** `device` of `client_id`, whose
    /// identity key is `identity_key` (docs/mls.md, *Multi-device*): a fresh MLS signature key,
    /// bound by the chain identity key → device key (`device.certificate`) → MLS key (the
    /// device key's signature, [`crate::make_device_credential`]). Verifiers accept its leaves
    /// only while the id's signed device list names the device.
    ///
    /// # Errors
    /// [`MlsError::NoClient`] if the store already holds a client; store or key errors.
    pub fn create_device(
        store: MlsStore,
        identity_key: &lattice_crypto::IdentityPublicKey,
        client_id: ClientId,
        device: &crate::DeviceCredential<'_>,
    ) -> Result<Self, MlsError> {
        let id = client_id.clone();
        Self::create_with(store, client_id, |key| {
            crate::make_device_credential(identity_key, &id, device, key)
        })
    }

    fn create_with(
        store: MlsStore,
        client_id: ClientId,
        make: impl FnOnce(&[u8]) -> Result<Credential, MlsError>,
    ) -> Result<Self, MlsError> {
        if store.client_row()?.is_some() {
            return Err(MlsError::NoClient("the store already holds a client"));
        }
        let crypto = CryptoProvider::new().map_err(|e| MlsError::op("crypto provider", e))?;
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519)
            .map_err(|e| MlsError::op("signature key", e))?;
        let credential = make(signer.public())?;
        let identity_bytes = BasicCredential::try_from(credential.clone())
            .map_err(|e| MlsError::op("credential", e))?
            .identity()
            .to_vec();
        let row = ClientRow {
            client_id: client_id.as_str().to_owned(),
            signature_public_key: signer.to_public_vec(),
            credential: identity_bytes,
        };
        {
            let tx = store.conn.unchecked_transaction()?;
            let provider = Provider::new(&crypto, &tx);
            signer
                .store(openmls_traits::OpenMlsProvider::storage(&provider))
                .map_err(MlsError::Store)?;
            store::insert_client(&tx, &row)?;
            tx.commit()?;
        }
        tracing::info!(client_id = %client_id, "MLS client created");
        Ok(Self {
            store,
            crypto,
            client_id,
            credential: CredentialWithKey {
                credential,
                signature_key: signer.to_public_vec().into(),
            },
            signer,
            groups: BTreeMap::new(),
        })
    }

    /// Resumes the client kept in `store`, with every group at the epoch it was stored in.
    ///
    /// # Errors
    /// [`MlsError::NoClient`] if the store holds no client (or its key is missing).
    pub fn open(store: MlsStore) -> Result<Self, MlsError> {
        let row = store
            .client_row()?
            .ok_or(MlsError::NoClient("no client in this store"))?;
        let client_id = ClientId::new(row.client_id)
            .map_err(|_| MlsError::NoClient("the stored client id is invalid"))?;
        let crypto = CryptoProvider::new().map_err(|e| MlsError::op("crypto provider", e))?;
        let provider = Provider::new(&crypto, &store.conn);
        let storage = openmls_traits::OpenMlsProvider::storage(&provider);
        let signer =
            SignatureKeyPair::read(storage, &row.signature_public_key, SignatureScheme::ED25519)
                .ok_or(MlsError::NoClient("the client's signature key is missing"))?;
        let mut groups = BTreeMap::new();
        for raw in store.group_ids()? {
            let gid = OmlsGroupId::from_slice(&raw);
            if let Some(group) = MlsGroup::load(storage, &gid).map_err(MlsError::Store)? {
                groups.insert(GroupId(raw), group);
            }
        }
        let credential: Credential = BasicCredential::new(row.credential).into();
        tracing::info!(client_id = %client_id, groups = groups.len(), "MLS client resumed");
        Ok(Self {
            store,
            crypto,
            client_id,
            credential: CredentialWithKey {
                credential,
                signature_key: row.signature_public_key.into(),
            },
            signer,
            groups,
        })
    }

    /// This client's Lattice id.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// Who this client is, as its own credential says: its id, the identity key it is bound to,
    /// and its device (`None` for the id's primary device).
    ///
    /// # Errors
    /// [`MlsError::IdentityBinding`] if the stored credential is malformed.
    pub fn own_identity(&self) -> Result<MemberIdentity, MlsError> {
        claimed_identity(&self.credential.credential)
    }

    /// The groups this client is in.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups.keys().cloned().collect()
    }

    /// The connection of the store (read-only use: inspection, sharing with history queries).
    pub fn connection(&self) -> &Connection {
        &self.store.conn
    }

    /// Closes the client, giving its store back.
    pub fn into_store(self) -> MlsStore {
        self.store
    }

    /// Runs `f` in one transaction. On error the transaction rolls back and `group` (if any) is
    /// reloaded from the store, so memory never runs ahead of what is written.
    fn transact<T>(
        &mut self,
        group: Option<&GroupId>,
        f: impl FnOnce(
            &Provider<'_>,
            &SignatureKeyPair,
            &mut BTreeMap<GroupId, MlsGroup>,
        ) -> Result<T, MlsError>,
    ) -> Result<T, MlsError> {
        let tx = self.store.conn.unchecked_transaction()?;
        let result = {
            let provider = Provider::new(&self.crypto, &tx);
            f(&provider, &self.signer, &mut self.groups)
        };
        match result {
            Ok(v) => {
                tx.commit()?;
                Ok(v)
            }
            Err(e) => {
                drop(tx);
                if let Some(gid) = group {
                    reload_group(&self.crypto, &self.store.conn, &mut self.groups, gid);
                }
                Err(e)
            }
        }
    }

    // ---- KeyPackages ------------------------------------------------------------------------

    fn build_key_package(
        &self,
        provider: &Provider<'_>,
        last_resort: bool,
    ) -> Result<Vec<u8>, MlsError> {
        let mut builder = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .key_package_lifetime(Lifetime::new(KEY_PACKAGE_LIFETIME_SECS));
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(CIPHERSUITE, provider, &self.signer, self.credential.clone())
            .map_err(|e| MlsError::op("key package", e))?;
        bundle
            .key_package()
            .tls_serialize_detached()
            .map_err(|e| MlsError::op("serialize key package", e))
    }

    /// Makes `count` one-time KeyPackages (their private keys stay in the store until a Welcome
    /// uses them), serialized for the directory.
    ///
    /// # Errors
    /// [`MlsError::TooLarge`] above [`MAX_KEY_PACKAGE_BATCH`]; store or MLS errors.
    pub fn key_packages(&mut self, count: usize) -> Result<Vec<Vec<u8>>, MlsError> {
        check_len("key package batch", count, MAX_KEY_PACKAGE_BATCH)?;
        let tx = self.store.conn.unchecked_transaction()?;
        let out = {
            let provider = Provider::new(&self.crypto, &tx);
            (0..count)
                .map(|_| self.build_key_package(&provider, false))
                .collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(out)
    }

    /// Makes a last-resort KeyPackage: reusable, handed out when the one-time stock is empty.
    ///
    /// # Errors
    /// Store or MLS errors.
    pub fn last_resort_key_package(&mut self) -> Result<Vec<u8>, MlsError> {
        let tx = self.store.conn.unchecked_transaction()?;
        let out = {
            let provider = Provider::new(&self.crypto, &tx);
            self.build_key_package(&provider, true)?
        };
        tx.commit()?;
        Ok(out)
    }

    /// Validates a KeyPackage fetched for another client: MLS validation (signature, lifetime,
    /// distinct keys, protocol version), our suite, and the identity binding against `pins`.
    ///
    /// # Errors
    /// [`MlsError::Malformed`], [`MlsError::KeyPackage`], [`MlsError::Ciphersuite`],
    /// [`MlsError::IdentityBinding`].
    pub fn validate_key_package(
        &self,
        bytes: &[u8],
        pins: &dyn IdentityPins,
    ) -> Result<ValidatedKeyPackage, MlsError> {
        check_len("key package", bytes.len(), MAX_MESSAGE_LEN)?;
        let kp_in = KeyPackageIn::tls_deserialize_exact(bytes)
            .map_err(|e| MlsError::malformed("key package", e))?;
        let key_package = kp_in
            .validate(&self.crypto, ProtocolVersion::Mls10)
            .map_err(|e| MlsError::KeyPackage(e.to_string()))?;
        if key_package.ciphersuite() != CIPHERSUITE {
            return Err(MlsError::Ciphersuite(u16::from(key_package.ciphersuite())));
        }
        let leaf = key_package.leaf_node();
        let identity = verify_binding(leaf.credential(), leaf.signature_key().as_slice(), pins)?;
        Ok(ValidatedKeyPackage {
            key_package,
            identity,
        })
    }

    // ---- Groups -----------------------------------------------------------------------------

    /// Creates a group with this client as its only member.
    ///
    /// # Errors
    /// [`MlsError::GroupName`]; store or MLS errors.
    pub fn create_group(&mut self, name: &str) -> Result<GroupId, MlsError> {
        let extensions = name_extensions(name)?;
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .capabilities(capabilities())
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(sender_ratchet())
            .with_group_context_extensions(extensions)
            .build();
        let credential = self.credential.clone();
        let gid = self.transact(None, |provider, signer, groups| {
            let group = MlsGroup::new(provider, signer, &config, credential)
                .map_err(|e| MlsError::op("create group", e))?;
            let gid = GroupId(group.group_id().as_slice().to_vec());
            store::insert_group(tx_conn(provider), &gid.0)?;
            groups.insert(gid.clone(), group);
            Ok(gid)
        })?;
        tracing::info!(group = %gid, "MLS group created");
        Ok(gid)
    }

    fn group(&self, gid: &GroupId) -> Result<&MlsGroup, MlsError> {
        self.groups
            .get(gid)
            .ok_or_else(|| MlsError::UnknownGroup(gid.clone()))
    }

    /// The group's members, with their ids and identity keys.
    ///
    /// # Errors
    /// [`MlsError::UnknownGroup`]; a member credential that does not parse (cannot happen for
    /// members admitted by this engine).
    pub fn members(&self, gid: &GroupId) -> Result<Vec<Member>, MlsError> {
        self.group(gid)?
            .members()
            .map(|m| {
                Ok(Member {
                    identity: claimed_identity(&m.credential)?,
                    leaf_index: m.index.u32(),
                })
            })
            .collect()
    }

    /// The MLS signature key of each member's leaf, by id (one entry per leaf). A member whose
    /// key differs between two groups is a different MLS client (device or installation) of
    /// that id.
    ///
    /// # Errors
    /// [`MlsError::UnknownGroup`]; a member credential that does not parse.
    pub fn member_signature_keys(
        &self,
        gid: &GroupId,
    ) -> Result<Vec<(ClientId, Vec<u8>)>, MlsError> {
        self.group(gid)?
            .members()
            .map(|m| Ok((claimed_identity(&m.credential)?.client_id, m.signature_key)))
            .collect()
    }

    /// Each leaf's identity (id and device) and MLS signature key: a leaf of the same
    /// (id, device) with another key is another MLS client of that device (it started over).
    ///
    /// # Errors
    /// [`MlsError::UnknownGroup`]; a member credential that does not parse.
    pub fn member_leaf_keys(
        &self,
        gid: &GroupId,
    ) -> Result<Vec<(MemberIdentity, Vec<u8>)>, MlsError> {
        self.group(gid)?
            .members()
            .map(|m| Ok((claimed_identity(&m.credential)?, m.signature_key)))
            .collect()
    }

    /// The group's name.
    ///
    /// # Errors
    /// [`MlsError::UnknownGroup`].
    pub fn group_name(&self, gid: &GroupId) -> Result<String, MlsError> {
        Ok(name_of(self.group(gid)?.extensions()))
    }

    /// The group's current epoch.
    ///
    /// # Errors
    /// [`MlsError::UnknownGroup`].
    pub fn epoch(&self, gid: &GroupId) -> Result<u64, MlsError> {
        Ok(self.group(gid)?.epoch().as_u64())
    }

    /// Whether this client has a Commit waiting for the delivery service's verdict.
    ///
    /// # Errors
    /// [`MlsError::UnknownGroup`].
    pub fn has_pending_commit(&self, gid: &GroupId) -> Result<bool, MlsError> {
        Ok(self.group(gid)?.pending_commit().is_some())
    }

    /// The ids of the members the group will have once this client's pending Commit is merged:
    /// the current members minus those it removes, plus those it adds, read from the staged
    /// Commit itself (it also commits queued proposals, such as a leave request). This is the
    /// member list the delivery service is told with the Commit.
    ///
    /// # Errors
    /// [`MlsError::UnknownGroup`], [`MlsError::NoPendingCommit`]; a malformed credential.
    pub fn pending_commit_members(&self, gid: &GroupId) -> Result<Vec<ClientId>, MlsError> {
        let mut ids: Vec<ClientId> = self
            .pending_commit_leaves(gid)?
            .into_iter()
            .map(|m| m.client_id)
            .collect();
        ids.dedup();
        Ok(ids)
    }

    /// The leaves the group will have once this client's pending Commit is merged, one per
    /// member device (an id's primary device has `device_id` `None`), sorted by id then device:
    /// what the delivery service is told as `leaves`, so that fan-out reaches every device.
    ///
    /// # Errors
    /// As [`MlsClient::pending_commit_members`].
    pub fn pending_commit_leaves(&self, gid: &GroupId) -> Result<Vec<MemberIdentity>, MlsError> {
        let group = self.group(gid)?;
        let staged = group
            .pending_commit()
            .ok_or_else(|| MlsError::NoPendingCommit(gid.clone()))?;
        let removed: Vec<u32> = staged
            .remove_proposals()
            .map(|p| p.remove_proposal().removed().u32())
            .collect();
        let mut leaves = Vec::new();
        for m in group.members() {
            if !removed.contains(&m.index.u32()) {
                leaves.push(claimed_identity(&m.credential)?);
            }
        }
        for a in staged.add_proposals() {
            let leaf = a.add_proposal().key_package().leaf_node();
            leaves.push(claimed_identity(leaf.credential())?);
        }
        leaves.sort_by(|a, b| {
            (a.client_id.as_str(), &a.device_id).cmp(&(b.client_id.as_str(), &b.device_id))
        });
        leaves.dedup_by(|a, b| a.client_id == b.client_id && a.device_id == b.device_id);
        Ok(leaves)
    }

    /// Runs a Commit-making operation on one group and packs its output.
    fn commit_op(
        &mut self,
        gid: &GroupId,
        op: &'static str,
        f: impl FnOnce(
            &Provider<'_>,
            &SignatureKeyPair,
            &mut MlsGroup,
        ) -> Result<(MlsMessageOut, Option<MlsMessageOut>), MlsError>,
    ) -> Result<OutgoingCommit, MlsError> {
        let gid2 = gid.clone();
        let out = self.transact(Some(gid), move |provider, signer, groups| {
            let group = idle_group_mut(groups, &gid2)?;
            let epoch = group.epoch().as_u64();
            let (commit, welcome) = f(provider, signer, group)?;
            Ok(OutgoingCommit {
                group: gid2.clone(),
                epoch,
                commit: serialize(&commit)?,
                welcome: welcome.as_ref().map(serialize).transpose()?,
            })
        })?;
        tracing::debug!(group = %gid, op, epoch = out.epoch, commit_len = out.commit.len(), "commit made");
        Ok(out)
    }

    /// Adds members (from validated KeyPackages): a pending Commit plus a Welcome.
    ///
    /// # Errors
    /// [`MlsError::PendingCommit`], [`MlsError::UnknownGroup`]; MLS errors.
    pub fn add_members(
        &mut self,
        gid: &GroupId,
        key_packages: &[ValidatedKeyPackage],
    ) -> Result<OutgoingCommit, MlsError> {
        let kps: Vec<KeyPackage> = key_packages.iter().map(|k| k.key_package.clone()).collect();
        check_group_size(self.group(gid)?.members().count() + kps.len())?;
        self.commit_op(gid, "add", |provider, signer, group| {
            let (commit, welcome, _) = group
                .add_members(provider, signer, &kps)
                .map_err(|e| MlsError::op("add members", e))?;
            Ok((commit, Some(welcome)))
        })
    }

    /// Removes the members with these ids (every device of theirs in the group).
    ///
    /// # Errors
    /// [`MlsError::NotAMember`], [`MlsError::PendingCommit`]; MLS errors.
    pub fn remove_members(
        &mut self,
        gid: &GroupId,
        client_ids: &[ClientId],
    ) -> Result<OutgoingCommit, MlsError> {
        let members = self.members(gid)?;
        let mut leaves = Vec::new();
        for id in client_ids {
            let before = leaves.len();
            leaves.extend(
                members
                    .iter()
                    .filter(|m| &m.identity.client_id == id)
                    .map(|m| LeafNodeIndex::new(m.leaf_index)),
            );
            if leaves.len() == before {
                return Err(MlsError::NotAMember(id.clone()));
            }
        }
        self.commit_op(gid, "remove", |provider, signer, group| {
            let (commit, welcome, _) = group
                .remove_members(provider, signer, &leaves)
                .map_err(|e| MlsError::op("remove members", e))?;
            Ok((commit, welcome))
        })
    }

    /// Replaces this client's leaf (fresh HPKE key, fresh path secrets): the healing step of
    /// post-compromise security. Also commits any queued proposals (such as a leave request).
    ///
    /// # Errors
    /// [`MlsError::PendingCommit`]; MLS errors.
    pub fn self_update(&mut self, gid: &GroupId) -> Result<OutgoingCommit, MlsError> {
        self.commit_op(gid, "self update", |provider, signer, group| {
            let bundle = group
                .self_update(provider, signer, LeafNodeParameters::default())
                .map_err(|e| MlsError::op("self update", e))?;
            let (commit, welcome, _) = bundle.into_contents();
            let welcome = welcome.map(|w| MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10));
            Ok((commit, welcome))
        })
    }

    /// Renames the group (a Commit of the group context's name extension).
    ///
    /// # Errors
    /// [`MlsError::GroupName`], [`MlsError::PendingCommit`]; MLS errors.
    pub fn rename(&mut self, gid: &GroupId, name: &str) -> Result<OutgoingCommit, MlsError> {
        let extensions = name_extensions(name)?;
        self.commit_op(gid, "rename", |provider, signer, group| {
            let (commit, welcome, _) = group
                .update_group_context_extensions(provider, extensions, signer)
                .map_err(|e| MlsError::op("rename", e))?;
            Ok((commit, welcome))
        })
    }

    /// Commits the proposals queued in this epoch (such as leave requests).
    ///
    /// # Errors
    /// [`MlsError::PendingCommit`]; MLS errors.
    pub fn commit_pending_proposals(&mut self, gid: &GroupId) -> Result<OutgoingCommit, MlsError> {
        self.commit_op(gid, "commit proposals", |provider, signer, group| {
            let (commit, welcome, _) = group
                .commit_to_pending_proposals(provider, signer)
                .map_err(|e| MlsError::op("commit proposals", e))?;
            Ok((commit, welcome))
        })
    }

    /// Asks to leave: returns a Remove proposal of this client for the group. Another member
    /// commits it; this client learns it is out ([`GroupEvent::Removed`]) when it processes that
    /// Commit.
    ///
    /// # Errors
    /// [`MlsError::PendingCommit`]; MLS errors.
    pub fn leave(&mut self, gid: &GroupId) -> Result<Vec<u8>, MlsError> {
        let gid2 = gid.clone();
        self.transact(Some(gid), move |provider, signer, groups| {
            let group = idle_group_mut(groups, &gid2)?;
            let proposal = group
                .leave_group(provider, signer)
                .map_err(|e| MlsError::op("leave", e))?;
            serialize(&proposal)
        })
    }

    /// The delivery service accepted this client's pending Commit: merge it (the group moves to
    /// the next epoch) and report what it did.
    ///
    /// # Errors
    /// [`MlsError::NoPendingCommit`]; store or MLS errors.
    pub fn confirm_commit(&mut self, gid: &GroupId) -> Result<Vec<GroupEvent>, MlsError> {
        let gid2 = gid.clone();
        let events = self.transact(Some(gid), move |provider, _, groups| {
            let group = group_mut(groups, &gid2)?;
            let staged = group
                .pending_commit()
                .ok_or_else(|| MlsError::NoPendingCommit(gid2.clone()))?;
            let mut events = commit_events(group, staged)?;
            group
                .merge_pending_commit(provider)
                .map_err(|e| MlsError::op("merge own commit", e))?;
            events.push(GroupEvent::EpochChanged {
                epoch: group.epoch().as_u64(),
            });
            Ok(events)
        })?;
        tracing::debug!(group = %gid, epoch = self.epoch(gid)?, "own commit merged");
        Ok(events)
    }

    /// Another member's Commit won this epoch: drop this client's pending Commit (the group
    /// stays in its epoch, ready to process the winner). Anything the lost Commit carried (an
    /// add, a removal, a rename) must be made again afterwards.
    ///
    /// # Errors
    /// [`MlsError::NoPendingCommit`]; store errors.
    pub fn discard_commit(&mut self, gid: &GroupId) -> Result<(), MlsError> {
        let gid2 = gid.clone();
        self.transact(Some(gid), move |provider, _, groups| {
            let group = group_mut(groups, &gid2)?;
            if group.pending_commit().is_none() {
                return Err(MlsError::NoPendingCommit(gid2.clone()));
            }
            group
                .clear_pending_commit(openmls_traits::OpenMlsProvider::storage(provider))
                .map_err(MlsError::Store)?;
            Ok(())
        })?;
        tracing::debug!(group = %gid, "own commit discarded");
        Ok(())
    }

    /// Joins a group from a Welcome. Every member of the group must be bound to the identity key
    /// `pins` holds for its id, or the Welcome is refused (and nothing is stored).
    ///
    /// # Errors
    /// [`MlsError::Malformed`], [`MlsError::IdentityBinding`], [`MlsError::Ciphersuite`],
    /// [`MlsError::Handshake`] (not for one of our KeyPackages, bad signature, ...).
    pub fn join(
        &mut self,
        welcome: &[u8],
        pins: &dyn IdentityPins,
    ) -> Result<(GroupId, GroupEvent), MlsError> {
        self.join_delivered(welcome, pins, None)
    }

    /// [`MlsClient::join`] for the delivery `(sender, message_id)`, recorded durably in the same
    /// transaction: the same delivery again (a redelivery after a crash, a replay) is
    /// [`MlsError::Duplicate`] and changes nothing.
    ///
    /// # Errors
    /// [`MlsError::Duplicate`], and those of [`MlsClient::join`].
    pub fn join_once(
        &mut self,
        sender: &str,
        message_id: &str,
        welcome: &[u8],
        pins: &dyn IdentityPins,
    ) -> Result<(GroupId, GroupEvent), MlsError> {
        self.join_delivered(welcome, pins, Some((sender, message_id)))
    }

    fn join_delivered(
        &mut self,
        welcome: &[u8],
        pins: &dyn IdentityPins,
        delivery: Option<(&str, &str)>,
    ) -> Result<(GroupId, GroupEvent), MlsError> {
        check_len("welcome", welcome.len(), MAX_MESSAGE_LEN)?;
        let msg = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| MlsError::malformed("welcome", e))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(MlsError::malformed("welcome", "not a Welcome message"));
        };
        let (gid, event) = self.transact(None, |provider, _, groups| {
            record_once(provider, delivery)?;
            let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None)
                .map_err(|e| MlsError::Handshake(e.to_string()))?;
            let context = staged.group_context();
            if context.ciphersuite() != CIPHERSUITE {
                return Err(MlsError::Ciphersuite(u16::from(context.ciphersuite())));
            }
            let name = name_of(context.extensions());
            check_group_size(staged.members().count())?;
            let own = staged.own_leaf_index();
            let mut members = Vec::new();
            for m in staged.members() {
                let identity = if m.index == own {
                    claimed_identity(&m.credential)?
                } else {
                    verify_binding(&m.credential, &m.signature_key, pins)?
                };
                members.push(identity);
            }
            let group = staged
                .into_group(provider)
                .map_err(|e| MlsError::Handshake(e.to_string()))?;
            let gid = GroupId(group.group_id().as_slice().to_vec());
            store::insert_group(tx_conn(provider), &gid.0)?;
            groups.insert(gid.clone(), group);
            Ok((gid, GroupEvent::Joined { name, members }))
        })?;
        tracing::info!(group = %gid, epoch = self.epoch(&gid)?, "joined MLS group");
        Ok((gid, event))
    }

    /// Seals an application message for the group.
    ///
    /// # Errors
    /// [`MlsError::TooLarge`], [`MlsError::PendingCommit`]; MLS errors.
    pub fn encrypt(&mut self, gid: &GroupId, plaintext: &[u8]) -> Result<Vec<u8>, MlsError> {
        check_len("plaintext", plaintext.len(), MAX_PLAINTEXT_LEN)?;
        let gid2 = gid.clone();
        self.transact(Some(gid), move |provider, signer, groups| {
            let group = idle_group_mut(groups, &gid2)?;
            let msg = group
                .create_message(provider, signer, plaintext)
                .map_err(|e| MlsError::op("encrypt", e))?;
            serialize(&msg)
        })
    }

    /// Reads the group id an MLS message is for (to route it), without processing it.
    ///
    /// # Errors
    /// [`MlsError::Malformed`] if it is not a group message.
    pub fn message_group(message: &[u8]) -> Result<GroupId, MlsError> {
        let (gid, _) = parse_protocol_message(message)?;
        Ok(gid)
    }

    /// Processes an incoming group message (application or handshake) and returns its events.
    ///
    /// Handshake messages must arrive in the delivery service's order: one from a past epoch is
    /// refused as [`MlsError::StaleEpoch`] (a replay or a lost race), one from a later epoch as
    /// [`MlsError::FutureEpoch`] (a Commit was dropped or reordered: fetch it first). New members
    /// in a Commit must be bound to their pinned identity keys, or the Commit is refused and the
    /// group stays where it was.
    ///
    /// # Errors
    /// The above, [`MlsError::PendingCommit`] for a handshake while this client's own Commit
    /// awaits its verdict, [`MlsError::Decrypt`] for an application message that does not open,
    /// [`MlsError::Handshake`] for a refused handshake.
    pub fn process(
        &mut self,
        message: &[u8],
        pins: &dyn IdentityPins,
    ) -> Result<Vec<GroupEvent>, MlsError> {
        self.process_delivered(message, pins, None)
    }

    /// [`MlsClient::process`] for the delivery `(sender, message_id)`, recorded durably in the
    /// same transaction as the new group state: the same delivery again (the delivery service
    /// redelivers what was not acknowledged, e.g. after a crash between processing and `ack`;
    /// or a replay) is [`MlsError::Duplicate`] and changes nothing, across restarts. The last
    /// [`crate::limits::MAX_REMEMBERED_DELIVERIES`] deliveries are remembered. A message that
    /// fails is not recorded (its transaction rolls back).
    ///
    /// # Errors
    /// [`MlsError::Duplicate`], and those of [`MlsClient::process`].
    pub fn process_once(
        &mut self,
        sender: &str,
        message_id: &str,
        message: &[u8],
        pins: &dyn IdentityPins,
    ) -> Result<Vec<GroupEvent>, MlsError> {
        self.process_delivered(message, pins, Some((sender, message_id)))
    }

    fn process_delivered(
        &mut self,
        message: &[u8],
        pins: &dyn IdentityPins,
        delivery: Option<(&str, &str)>,
    ) -> Result<Vec<GroupEvent>, MlsError> {
        let (gid, protocol) = parse_protocol_message(message)?;
        let gid2 = gid.clone();
        self.transact(Some(&gid), move |provider, _, groups| {
            record_once(provider, delivery)?;
            process_in(provider, groups, &gid2, protocol, pins)
        })
    }

    /// Deletes this client's state of group `gid` locally (its tree and secrets), without
    /// telling anyone: for a group that can no longer be used, such as a 1:1 conversation whose
    /// peer started over with a new MLS client. The delivery service still lists this client.
    ///
    /// # Errors
    /// [`MlsError::UnknownGroup`]; a store failure.
    pub fn forget_group(&mut self, gid: &GroupId) -> Result<(), MlsError> {
        let gid2 = gid.clone();
        self.transact(Some(gid), move |provider, _, groups| {
            group_mut(groups, &gid2)?
                .delete(openmls_traits::OpenMlsProvider::storage(provider))
                .map_err(MlsError::Store)?;
            store::delete_group(tx_conn(provider), &gid2.0)?;
            groups.remove(&gid2);
            Ok(())
        })?;
        tracing::info!(group = %gid, "MLS group forgotten locally");
        Ok(())
    }

    /// Processes a burst of messages (a mailbox drain) in **one** SQLite transaction, each in its
    /// own savepoint: a message that fails leaves no trace and does not stop the others. The
    /// file commit is paid once for the batch instead of once per message. Acknowledge the
    /// messages to the mailbox only after this returns: a crash before the final commit loses
    /// the whole batch's effects, and the messages must be delivered again.
    ///
    /// # Errors
    /// The outer error is a store failure (nothing of the batch was kept); each message's own
    /// outcome is in the returned vector, in order, as [`MlsClient::process`] would give it.
    pub fn process_batch<'m>(
        &mut self,
        messages: impl IntoIterator<Item = &'m [u8]>,
        pins: &dyn IdentityPins,
    ) -> Result<Vec<Result<Vec<GroupEvent>, MlsError>>, MlsError> {
        let mut tx = self.store.conn.unchecked_transaction()?;
        let mut results = Vec::new();
        for message in messages {
            let (gid, protocol) = match parse_protocol_message(message) {
                Ok(parsed) => parsed,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let sp = tx.savepoint()?;
            let outcome = {
                let provider = Provider::new(&self.crypto, &sp);
                process_in(&provider, &mut self.groups, &gid, protocol, pins)
            };
            match outcome {
                Ok(events) => {
                    sp.commit()?;
                    results.push(Ok(events));
                }
                Err(e) => {
                    drop(sp); // rolls the savepoint back
                    reload_group(&self.crypto, &tx, &mut self.groups, &gid);
                    results.push(Err(e));
                }
            }
        }
        tx.commit()?;
        Ok(results)
    }
}

/// Reloads `gid` from the store into `groups` (after a rollback, so memory matches the store).
fn reload_group(
    crypto: &CryptoProvider,
    conn: &Connection,
    groups: &mut BTreeMap<GroupId, MlsGroup>,
    gid: &GroupId,
) {
    let provider = Provider::new(crypto, conn);
    let storage = openmls_traits::OpenMlsProvider::storage(&provider);
    match MlsGroup::load(storage, &OmlsGroupId::from_slice(&gid.0)) {
        Ok(Some(g)) => {
            groups.insert(gid.clone(), g);
        }
        Ok(None) => {
            groups.remove(gid);
        }
        Err(load) => {
            tracing::error!(group = %gid, error = %load, "reload after a failed operation")
        }
    }
}

/// The work of [`MlsClient::process`] inside an open transaction.
fn process_in(
    provider: &Provider<'_>,
    groups: &mut BTreeMap<GroupId, MlsGroup>,
    gid: &GroupId,
    protocol: ProtocolMessage,
    pins: &dyn IdentityPins,
) -> Result<Vec<GroupEvent>, MlsError> {
    let group = group_mut(groups, gid)?;
    let current = group.epoch().as_u64();
    let got = protocol.epoch().as_u64();
    let handshake = !matches!(protocol.content_type(), ContentType::Application);
    if got > current {
        return Err(MlsError::FutureEpoch { got, current });
    }
    if handshake {
        if got < current {
            return Err(MlsError::StaleEpoch { got, current });
        }
        if group.pending_commit().is_some() {
            return Err(MlsError::PendingCommit(gid.clone()));
        }
    }
    let processed = group.process_message(provider, protocol).map_err(|e| {
        if handshake {
            MlsError::Handshake(e.to_string())
        } else {
            MlsError::Decrypt
        }
    })?;
    let sender = processed.sender().clone();
    let credential = processed.credential().clone();
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(m) => Ok(vec![GroupEvent::Application {
            sender: claimed_identity(&credential)?,
            bytes: m.into_bytes(),
        }]),
        ProcessedMessageContent::ProposalMessage(p) => {
            let event = match p.proposal() {
                Proposal::Remove(r) if matches!(sender, Sender::Member(i) if i == r.removed()) => {
                    GroupEvent::LeaveRequested {
                        member: claimed_identity(&credential)?,
                    }
                }
                _ => {
                    return Err(MlsError::Handshake(
                        "only leave requests are accepted as standalone proposals".into(),
                    ))
                }
            };
            group
                .store_pending_proposal(openmls_traits::OpenMlsProvider::storage(provider), *p)
                .map_err(MlsError::Store)?;
            Ok(vec![event])
        }
        ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(MlsError::Handshake(
            "external proposals are not accepted".into(),
        )),
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            let removed_count = staged.remove_proposals().count();
            let added_count = staged.add_proposals().count();
            check_group_size(
                (group.members().count() + added_count).saturating_sub(removed_count),
            )?;
            verify_commit_bindings(&staged, pins)?;
            let mut events = commit_events(group, &staged)?;
            let removed = staged.self_removed();
            group
                .merge_staged_commit(provider, *staged)
                .map_err(|e| MlsError::op("merge commit", e))?;
            if removed {
                group
                    .delete(openmls_traits::OpenMlsProvider::storage(provider))
                    .map_err(MlsError::Store)?;
                store::delete_group(tx_conn(provider), &gid.0)?;
                groups.remove(gid);
                events.push(GroupEvent::Removed);
            } else {
                events.push(GroupEvent::EpochChanged {
                    epoch: group.epoch().as_u64(),
                });
            }
            Ok(events)
        }
        _ => Err(MlsError::Handshake("unsupported message content".into())),
    }
}

/// Records `delivery` (sender, message id) in the open transaction: [`MlsError::Duplicate`] if
/// it was recorded before.
fn record_once(provider: &Provider<'_>, delivery: Option<(&str, &str)>) -> Result<(), MlsError> {
    let Some((sender, message_id)) = delivery else {
        return Ok(());
    };
    if store::record_delivery(tx_conn(provider), sender, message_id)? {
        Ok(())
    } else {
        Err(MlsError::Duplicate {
            sender: sender.to_owned(),
            message_id: message_id.to_owned(),
        })
    }
}

/// The connection a provider writes through (the open transaction).
fn tx_conn<'a>(provider: &'a Provider<'_>) -> &'a Connection {
    provider.connection()
}

fn parse_protocol_message(message: &[u8]) -> Result<(GroupId, ProtocolMessage), MlsError> {
    check_len("message", message.len(), MAX_MESSAGE_LEN)?;
    let msg = MlsMessageIn::tls_deserialize_exact(message)
        .map_err(|e| MlsError::malformed("message", e))?;
    let protocol = msg
        .try_into_protocol_message()
        .map_err(|e| MlsError::malformed("message", e))?;
    Ok((GroupId(protocol.group_id().as_slice().to_vec()), protocol))
}

/// Every leaf a Commit brings in or replaces must be bound to its pinned identity.
fn verify_commit_bindings(staged: &StagedCommit, pins: &dyn IdentityPins) -> Result<(), MlsError> {
    for add in staged.add_proposals() {
        let leaf = add.add_proposal().key_package().leaf_node();
        verify_binding(leaf.credential(), leaf.signature_key().as_slice(), pins)?;
    }
    for update in staged.update_proposals() {
        let leaf = update.update_proposal().leaf_node();
        verify_binding(leaf.credential(), leaf.signature_key().as_slice(), pins)?;
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        verify_binding(leaf.credential(), leaf.signature_key().as_slice(), pins)?;
    }
    Ok(())
}

/// What a Commit (staged, not yet merged) does, as events; read against the group's current
/// tree (for the identities of removed members) and name.
fn commit_events(group: &MlsGroup, staged: &StagedCommit) -> Result<Vec<GroupEvent>, MlsError> {
    let mut events = Vec::new();
    let added = staged
        .add_proposals()
        .map(|a| claimed_identity(a.add_proposal().key_package().leaf_node().credential()))
        .collect::<Result<Vec<_>, _>>()?;
    if !added.is_empty() {
        events.push(GroupEvent::MembersAdded { members: added });
    }
    for r in staged.remove_proposals() {
        if let Some(credential) = group.member(r.remove_proposal().removed()) {
            events.push(GroupEvent::MemberRemoved {
                member: claimed_identity(credential)?,
            });
        }
    }
    for u in staged.update_proposals() {
        events.push(GroupEvent::MemberUpdated {
            member: claimed_identity(u.update_proposal().leaf_node().credential())?,
        });
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        let member = claimed_identity(leaf.credential())?;
        if !events
            .iter()
            .any(|e| matches!(e, GroupEvent::MemberUpdated { member: m } if *m == member))
        {
            events.push(GroupEvent::MemberUpdated { member });
        }
    }
    let new_name = name_of(staged.group_context().extensions());
    if new_name != name_of(group.extensions()) {
        events.push(GroupEvent::Renamed { name: new_name });
    }
    Ok(events)
}

/// The group `gid` of this client.
fn group_mut<'a>(
    groups: &'a mut BTreeMap<GroupId, MlsGroup>,
    gid: &GroupId,
) -> Result<&'a mut MlsGroup, MlsError> {
    groups
        .get_mut(gid)
        .ok_or_else(|| MlsError::UnknownGroup(gid.clone()))
}

/// The group `gid`, if no Commit of ours waits for the delivery service's verdict (a group with
/// one takes no new Commit or message until `confirm_commit` or `discard_commit`).
fn idle_group_mut<'a>(
    groups: &'a mut BTreeMap<GroupId, MlsGroup>,
    gid: &GroupId,
) -> Result<&'a mut MlsGroup, MlsError> {
    let group = group_mut(groups, gid)?;
    if group.pending_commit().is_some() {
        return Err(MlsError::PendingCommit(gid.clone()));
    }
    Ok(group)
}
