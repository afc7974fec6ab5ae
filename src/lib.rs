//! trafficshift: a reconciling controller that moves traffic between AWS backends through Route53
//! weighted records, scaling ECS capacity before traffic.
#![forbid(unsafe_code)]

pub mod aws;
pub mod error;
pub mod metrics;
pub mod spec;
pub mod status;

pub use error::{Error, Result};
