//! The one integration-test binary: a module per area, shared helpers in `tests/support`.

#[path = "../support/mod.rs"]
mod support;

mod chart;
