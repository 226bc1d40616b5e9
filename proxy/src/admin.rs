//! The admin API (Envoy-compatible endpoints on the bootstrap's admin address).
