//! Tiny hex helper for `Debug` output (the library does not depend on a hex crate).

use core::fmt;

/// Writes the first `max` bytes of `bytes` as lowercase hex, followed by `…` if truncated.
pub(crate) fn write_prefix(f: &mut fmt::Formatter<'_>, bytes: &[u8], max: usize) -> fmt::Result {
    for b in bytes.iter().take(max) {
        write!(f, "{b:02x}")?;
    }
    if bytes.len() > max {
        f.write_str("…")?;
    }
    Ok(())
}

/// A `Debug`/`Display` adapter printing a hex prefix of public bytes.
pub(crate) struct HexPrefix<'a>(pub(crate) &'a [u8], pub(crate) usize);

impl fmt::Debug for HexPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_prefix(f, self.0, self.1)
    }
}
