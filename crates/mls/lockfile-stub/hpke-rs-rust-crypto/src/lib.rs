//! Lockfile stand-in; see Cargo.toml. Compiling it is a mistake, so it refuses to.
compile_error!(
    "hpke-rs-rust-crypto is a lockfile stub in Lattice: enable the libcrux provider, not RustCrypto"
);
