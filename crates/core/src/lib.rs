//! Rouse's domain model, shared by every role and free of I/O.
//!
//! - [`names`]: project and service names (the deployment manual's rules) and
//!   how a project maps to an Octue SRUID namespace.
//! - [`sruid`]: service revision unique identifiers, `<namespace>/<name>:<tag>`.
//! - [`service`]: a service's record, its scaling settings and their defaults.
//! - [`build`]: a build's status, a revision's rollout state, routing.
//!
//! Everything here validates on construction, so a value of these types is
//! known to be well formed wherever it travels.

pub mod build;
pub mod names;
pub mod prometheus;
pub mod protocol;
pub mod revision;
pub mod service;
pub mod sruid;

pub use names::{NameError, ProjectName, ServiceName};
pub use service::{
    EnvError, EnvVars, IngressPolicy, Scaling, ScalingError, Service, ServiceStatus,
};
pub use sruid::{Sruid, SruidError};
