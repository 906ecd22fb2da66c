//! The agent's client against something at the registry's address that answers with far too
//! much: it stops reading at `MAX_ANSWER_BYTES` and treats it as unavailable (the report
//! stays queued), instead of buffering whatever is sent. The stub on 127.0.0.1 plays a
//! hostile server; it tests the client, not the registry.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use agent::client::{Client, Outcome, MAX_ANSWER_BYTES};
use axum::routing::post;
use ed25519_dalek::SigningKey;
use gridtypes::{NodeRegistration, Resources};
use rand::rngs::OsRng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_not_buffered() {
    // 64 MiB of JSON-looking bytes, streamed.
    let app = axum::Router::new().route(
        "/api/v1/nodes",
        post(|| async {
            let chunk = bytes::Bytes::from(vec![b' '; 1 << 20]);
            let stream = futures_util::stream::iter(
                (0..64).map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone())),
            );
            axum::body::Body::from_stream(stream)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::new(
        &url,
        SigningKey::generate(&mut OsRng),
        Duration::from_secs(10),
    );
    let reg = NodeRegistration {
        farm_id: 1,
        capacity: Resources::from_gib(1, 1.0, 1.0, 1.0),
        serial: None,
        virtualized: true,
        interfaces: vec![],
        agent_version: None,
        box_key: None,
        warnings: vec![],
    };
    match client.register(&reg).await {
        Outcome::Unavailable(why) => {
            assert!(why.contains(&MAX_ANSWER_BYTES.to_string()), "{why}")
        }
        other => panic!("{other:?}"),
    }
}
