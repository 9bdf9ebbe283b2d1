//! The cleartext header of an MLS message (RFC 9420 §6), read without an MLS library: the
//! delivery service never decrypts or verifies anything, but the framing tells it, in the clear,
//! which group and epoch a `PrivateMessage` belongs to and whether it is a Commit (RFC 9420 §16.6:
//! the DS may use them to order handshake messages). With it the server keeps every Commit on the
//! epoch-checked path: a Commit sent as a `group_message` would skip the check, and two such
//! Commits could fork a group.
//!
//! ```text
//! MLSMessage     = version: u16 (1 = mls10) ‖ wire_format: u16 ‖ body
//! PrivateMessage = group_id: opaque<V> ‖ epoch: u64 ‖ content_type: u8 ‖ …   (wire_format 2)
//! Welcome                                                                     (wire_format 3)
//! ```

/// `mls10`.
const MLS10: u16 = 1;
/// `WireFormat::mls_private_message`.
pub(super) const PRIVATE_MESSAGE: u16 = 2;
/// `WireFormat::mls_welcome`.
pub(super) const WELCOME: u16 = 3;
/// `ContentType::commit`.
pub(super) const COMMIT: u8 = 3;

/// What the clear header of an MLS message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Header {
    /// A `PrivateMessage` of `group_id` in `epoch` with `content_type` (1 application,
    /// 2 proposal, 3 commit).
    Private {
        /// The group id's bytes.
        group_id: Vec<u8>,
        /// Its epoch.
        epoch: u64,
        /// Its content type.
        content_type: u8,
    },
    /// Any other wire format (`PublicMessage` 1, Welcome 3, GroupInfo 4, KeyPackage 5, …).
    Other(u16),
}

/// Reads the header; `None` if the bytes are not an MLS 1.0 message.
pub(super) fn parse(bytes: &[u8]) -> Option<Header> {
    let mut r = Reader(bytes);
    if r.u16()? != MLS10 {
        return None;
    }
    let wire_format = r.u16()?;
    if wire_format != PRIVATE_MESSAGE {
        return Some(Header::Other(wire_format));
    }
    let len = r.varint()?;
    let group_id = r.take(usize::try_from(len).ok()?)?.to_vec();
    let epoch = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let content_type = r.take(1)?[0];
    Some(Header::Private {
        group_id,
        epoch,
        content_type,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    /// RFC 9420 §2.1.2 variable-length integer: the top two bits give its length (1, 2 or 4
    /// bytes); `11` is invalid.
    fn varint(&mut self) -> Option<u32> {
        let first = *self.take(1)?.first()?;
        let len = match first >> 6 {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => return None,
        };
        let mut v = u32::from(first & 0x3f);
        for b in self.take(len - 1)? {
            v = (v << 8) | u32::from(*b);
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(group: &[u8], epoch: u64, ct: u8) -> Vec<u8> {
        let mut b = vec![0, 1, 0, 2];
        b.push(u8::try_from(group.len()).unwrap_or(0));
        b.extend_from_slice(group);
        b.extend_from_slice(&epoch.to_be_bytes());
        b.push(ct);
        b.extend_from_slice(&[0, 0, 0, 0]);
        b
    }

    #[test]
    fn reads_private_message_headers_and_refuses_what_is_not_mls() {
        assert_eq!(
            parse(&private(&[0xab, 0xcd], 7, COMMIT)),
            Some(Header::Private {
                group_id: vec![0xab, 0xcd],
                epoch: 7,
                content_type: COMMIT
            })
        );
        assert_eq!(parse(&[0, 1, 0, 3, 9, 9]), Some(Header::Other(WELCOME)));
        // a two-byte length
        let mut long = vec![0, 1, 0, 2, 0x40, 0x40];
        long.extend_from_slice(&[1; 64]);
        long.extend_from_slice(&5u64.to_be_bytes());
        long.push(1);
        assert!(
            matches!(parse(&long), Some(Header::Private { epoch: 5, ref group_id, .. }) if group_id.len() == 64)
        );
        for bad in [
            &[][..],
            &[0, 2, 0, 2],
            &[0, 1, 0, 2, 0xc0],
            &[0, 1, 0, 2, 4, 1, 2],
            &[0, 1, 0, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
