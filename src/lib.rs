//! trafficshift: a reconciling controller that moves traffic between AWS backends through Route53
//! weighted records, scaling ECS capacity before traffic.
#![forbid(unsafe_code)]

pub mod aws;
pub mod cli;
pub mod controller;
pub mod error;
pub mod gates;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod rollout;
pub mod sanitize;
pub mod server;
pub mod spec;
pub mod state;
pub mod status;
pub mod status_cli;
pub mod telemetry;
pub mod traffic;
pub mod watch;
pub mod weights;

pub use error::{Error, Result};
