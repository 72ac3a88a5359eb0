//! Rouse's domain model, shared by every role and free of I/O.
//!
//! - [`names`]: project and service names (the deployment manual's rules) and
//!   how a project maps to an Octue SRUID namespace.
//! - [`sruid`]: service revision unique identifiers, `<namespace>/<name>:<tag>`.
//! - [`service`]: a service's record, its scaling settings and their defaults.
//! - [`build`]: a build's status, a revision's rollout state, routing.
//! - [`function`]: what is checked before a Python function is deployed.
//!
//! Everything here validates on construction, so a value of these types is
//! known to be well formed wherever it travels.

pub mod build;
pub mod function;
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

/// What a JSON value is, for error messages: "a string", "an array", ….
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
