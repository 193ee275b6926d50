//! Test-only crate: `tests/manifests.rs` validates `k8s/base/` and `docker-compose.yml`.
