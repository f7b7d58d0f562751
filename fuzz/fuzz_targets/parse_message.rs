//! Fuzzes `parse_message` and `salvage_job_id` with arbitrary bodies. Properties checked beyond
//! "no panic": an accepted job survives `to_message` → `parse_message`, an error stays short, and
//! salvage agrees with the parser on accepted messages.
#![no_main]

use atlas_codex::job::{parse_message, salvage_job_id, Job};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    let salvaged = salvage_job_id(body);
    match parse_message(body) {
        Ok(job) => {
            assert_eq!(salvaged.as_ref(), Some(&job.job_id));
            let again = parse_message(&job.to_message().to_string()).expect("to_message output parses");
            assert_eq!(again, Job { legacy: false, ..job });
        }
        Err(e) => assert!(e.to_string().chars().count() <= 1024, "error text too long"),
    }
});
