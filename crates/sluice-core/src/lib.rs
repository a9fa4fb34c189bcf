//! The vocabulary every sluice crate shares, and nothing else: the change event, the shape of a
//! model's rows, the declarative configuration, a record's audited outcome, and the classification of failures by what the
//! caller must do about them.
//!
//! This crate depends on no other sluice crate and on no I/O library, so warehouses,
//! destinations, codecs and services can all speak it without knowing about each other.

pub mod audit;
pub mod config;
pub mod error_class;
pub mod event;
pub mod naming;
pub mod privacy;

pub use audit::SyncOutcome;
pub use error_class::{DeadLetterClass, ErrorClass};
pub use event::{ChangeEvent, Column, ColumnType, Op, Row, RowSchema, SourceInfo, Value};
