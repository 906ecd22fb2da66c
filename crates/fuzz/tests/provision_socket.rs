//! The provision service's socket (`provision::service`): the lines the agent sends. Only
//! root and the agent's group may connect, but the service still reads each line as hostile:
//! any bytes parse or are refused, never panic, and what parses writes back as itself.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fuzz::{config, mutate, mutations, watch};
use proptest::prelude::*;
use provision::service::Request;

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _w = watch("provision::service::Request", bytes);
    let Ok(r) = serde_json::from_slice::<Request>(bytes) else {
        return Ok(());
    };
    let again = serde_json::to_vec(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: Request =
        serde_json::from_slice(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(back, r);
    Ok(())
}

/// Requests as the agent writes them.
fn seeds() -> Vec<Vec<u8>> {
    let d = r#"{"contract_id":7,"version":2,"workloads":[{"kind":"container","name":"web","image":"10.0.2.2:5000/gridos/busybox:1","cmd":["sh"],"resources":{"cru":1,"mru":67108864,"sru":67108864}},{"kind":"volume","name":"data","size":33554432}]}"#;
    [
        format!(
            r#"{{"op":"apply","contract":7,"twin":"5866666666666666666666666666666666666666666666666666666666666666","deployment":{d}}}"#
        ),
        r#"{"op":"remove","contract":7}"#.to_string(),
        r#"{"op":"statuses","contract":7}"#.to_string(),
        r#"{"op":"logs","contract":7,"workload":"web","max_bytes":4096}"#.to_string(),
        r#"{"op":"usage"}"#.to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(b in fuzz::bytes(1024)) {
        check(&b)?;
    }

    #[test]
    fn mutated_requests(i in 0usize..5, muts in mutations()) {
        check(&mutate(&seeds()[i], &muts))?;
    }
}

#[test]
fn the_seeds_are_requests() {
    for s in seeds() {
        serde_json::from_slice::<Request>(&s).unwrap();
    }
}
