//! Shared test support. Each integration test file does `mod support;`.
#![allow(dead_code, unused_imports)]
pub mod metrics;
pub mod conformance;
pub mod app;
pub mod moto;
pub mod pages;
pub mod procs;
pub mod proxy;
