//! `lattice-chat`: a terminal client for Lattice.

fn main() {}
