//! `key_package_upload` and `key_package_fetch`: the MLS KeyPackage directory. Only verified
//! (identity-bound) ids take part. The server checks sizes, counts and ownership (an id uploads
//! only its own stock); it cannot check what a KeyPackage says (its credential, its signature):
//! the client that fetches one validates it against the identity key it pinned for the id.

use base64::Engine as _;
use lattice_protocol::limits::{
    KEY_PACKAGE_LOW_STOCK, MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGE_STOCK, MAX_KEY_PACKAGE_UPLOAD,
};
use lattice_protocol::{
    encode, ClientId, Frame, KeyPackageFetch, KeyPackageFound, KeyPackageUpload, KeyPackagesLow,
    KeyPackagesStored, ServerFrame,
};
use tracing::{debug, warn};

use super::Core;
use crate::hub::{Out, PeerEntry};
use crate::session::error::HandlerError;
use crate::store::UploadError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Decodes one KeyPackage field and checks its size.
fn key_package(field: &'static str, b64: &str) -> Result<Vec<u8>, HandlerError> {
    let bytes = B64
        .decode(b64)
        .ok()
        .filter(|b| !b.is_empty())
        .ok_or(HandlerError::NotBase64(field))?;
    if bytes.len() > MAX_KEY_PACKAGE_BYTES {
        return Err(HandlerError::KeyPackageRefused(format!(
            "A KeyPackage is at most {MAX_KEY_PACKAGE_BYTES} bytes (got {})",
            bytes.len()
        )));
    }
    Ok(bytes)
}

impl Core {
    pub(super) async fn on_key_package_upload(
        &mut self,
        peer: &PeerEntry,
        u: KeyPackageUpload,
    ) -> Result<ServerFrame, HandlerError> {
        if !peer.verified {
            return Err(HandlerError::VerificationRequired("key_package_upload"));
        }
        if u.key_packages.len() > MAX_KEY_PACKAGE_UPLOAD {
            return Err(HandlerError::KeyPackageRefused(format!(
                "Upload at most {MAX_KEY_PACKAGE_UPLOAD} KeyPackages at once (got {})",
                u.key_packages.len()
            )));
        }
        let one_time = u
            .key_packages
            .iter()
            .map(|k| key_package("keyPackages", k))
            .collect::<Result<Vec<_>, _>>()?;
        let last_resort = u
            .last_resort
            .as_deref()
            .map(|k| key_package("lastResort", k))
            .transpose()?;
        let stock = self
            .state
            .store
            .upload_key_packages(&peer.id, &one_time, last_resort.as_deref())
            .map_err(|e| match e {
                UploadError::StockFull { stock, adding } => HandlerError::KeyPackageStockFull {
                    stock,
                    adding,
                    max: MAX_KEY_PACKAGE_STOCK,
                },
                UploadError::Store(e) => {
                    warn!(error = %e, "key package upload failed");
                    HandlerError::StorageUnavailable
                }
            })?;
        debug!(
            added = one_time.len(),
            stock = stock.one_time,
            "key packages stored"
        );
        Ok(ServerFrame::KeyPackagesStored(KeyPackagesStored {
            stock: stock.one_time,
            last_resort: stock.last_resort,
        }))
    }

    pub(super) async fn on_key_package_fetch(
        &mut self,
        peer: &PeerEntry,
        f: KeyPackageFetch,
    ) -> Result<ServerFrame, HandlerError> {
        if !peer.verified {
            return Err(HandlerError::VerificationRequired("key_package_fetch"));
        }
        let fetched = match self.state.store.fetch_key_package(&f.client_id) {
            Ok(Some(k)) => k,
            Ok(None) => return Err(HandlerError::NoKeyPackage(f.client_id)),
            Err(e) => {
                warn!(error = %e, "key package fetch failed");
                return Err(HandlerError::StorageUnavailable);
            }
        };
        debug!(owner = %f.client_id, last_resort = fetched.last_resort, stock = fetched.stock_left, "key package fetched");
        if usize::try_from(fetched.stock_left).unwrap_or(usize::MAX) < KEY_PACKAGE_LOW_STOCK {
            self.notify_low_stock(&f.client_id, fetched.stock_left);
        }
        Ok(ServerFrame::KeyPackage(KeyPackageFound {
            client_id: f.client_id,
            key_package: B64.encode(&fetched.data),
            last_resort: fetched.last_resort,
        }))
    }

    /// Tells an online owner its stock runs low. Best effort through its bounded queue: with the
    /// queue full the notice is dropped (the owner learns its stock from every upload answer).
    fn notify_low_stock(&self, owner: &ClientId, stock: u32) {
        let Some(entry) = self.state.hub.get(owner) else {
            return;
        };
        let frame = encode(&Frame::new(ServerFrame::KeyPackagesLow(KeyPackagesLow {
            stock,
        })));
        if entry
            .session
            .tx
            .try_send(Out::Frame(Box::new(frame.into())))
            .is_err()
        {
            debug!(%owner, "low-stock notice dropped: queue full");
        }
    }
}
