//! Shared test helpers, compiled into the one integration-test binary (`tests/it`).

pub mod tools;
