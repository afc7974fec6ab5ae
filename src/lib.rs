//! trafficshift: a reconciling controller that moves traffic between AWS backends through Route53
//! weighted records, scaling ECS capacity before traffic.
#![forbid(unsafe_code)]

pub mod aws;
pub mod cli;
pub mod control_cli;
pub mod controller;
pub mod error;
pub mod gates;
pub mod metrics;
pub mod notify;
pub mod overrides;
pub mod plan;
pub mod reconcile;
pub mod retire;
pub mod rollout;
pub mod sanitize;
pub mod server;
pub mod spec;
pub mod state;
pub mod status;
pub mod status_cli;
pub mod status_wait;
pub mod telemetry;
pub mod traffic;
pub mod watch;
pub mod weights;
pub mod windows;

pub use error::{Error, Result};
