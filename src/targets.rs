//! Build targets: the short names users type and the Rust triples they map to.
