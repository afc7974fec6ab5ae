//! The integration tests, as ONE test binary: the AWS SDK and the harness are compiled and linked
//! once instead of once per file, and the end-to-end tests (which mostly wait on moto, the
//! realistic AWS layer and the controller's clocks) run side by side under one libtest.
//! Each file is a module named after what it tests; `cargo test --test it -- rollout::` runs one.

// `scale` (the benchmark's fleet) brings its own copy of `support`, as the bench binary needs it.
#![allow(clippy::duplicate_mod)]

#[path = "../support/outside.rs"]
mod outside;
#[path = "../support/prometheus.rs"]
mod prometheus;
/// The scale benchmark's fleet (call counts are guarded in CI by `call_counts`).
#[allow(dead_code)]
#[path = "../../benches/scale.rs"]
mod scale;
#[path = "../support/mod.rs"]
mod support;
#[path = "../support/writelog.rs"]
mod writelog;

mod accounts;
mod autoscaling;
mod aws_adapters;
mod call_counts;
mod chaos;
mod config_churn;
mod control;
mod controller_core;
mod crash;
mod docs;
mod faults;
mod fencing;
mod gates_prometheus;
mod guarantees;
mod lost_answers;
mod notify;
mod observability;
mod realistic;
mod retire;
mod rollout;
mod server;
mod spec_corpus;
mod spec_fuzz;
mod status_wait;
mod traffic;
mod windows;
