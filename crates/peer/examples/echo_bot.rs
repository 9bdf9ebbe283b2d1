//! Placeholder; the echo bot is written below.
fn main() {}
