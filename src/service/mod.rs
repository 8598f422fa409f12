//! The service layer: what the front ends serve and from where, independent of HTTP.
//! - [`error`]: the errors the services return (with their OCI codes).

pub mod error;
