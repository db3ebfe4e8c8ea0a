//! The integration-test binary: one module per area, all against real servers on 127.0.0.1.

#[path = "../support/mod.rs"]
mod support;

mod chart;
mod cli;
mod controller;
mod e2e;
mod http;
mod kube_client;
mod kube_sim;
mod kubectl;
mod platform;
mod pod_executor;
mod render;
mod runner;
mod worker;
mod worker_parts;
