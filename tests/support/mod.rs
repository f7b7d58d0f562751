//! Shared test support. Each integration test file does `mod support;`.
#![allow(dead_code, unused_imports)]
pub mod app;
pub mod conformance;
pub mod metrics;
pub mod moto;
pub mod pages;
pub mod procs;
pub mod proxy;
