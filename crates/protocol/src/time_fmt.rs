use std::time::SystemTime;

/// Formats a time as ISO-8601 / RFC 3339 in UTC with milliseconds, as in `error` frames
/// (`2026-11-26T06:09:46.123Z`, the shape JavaScript's `toISOString()` produces).
///
/// ```
/// let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
/// assert_eq!(lattice_protocol::iso8601(t), "2023-11-14T22:13:20.123Z");
/// ```
pub fn iso8601(at: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}
