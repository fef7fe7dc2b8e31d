//! The local Runtime API runs a real `lambda_runtime` binary the way Lambda does.

use std::path::Path;
use std::time::Duration;

use custody_local::runtime_api::{InvokeError, LocalFunction};
use serde_json::json;

async fn hello() -> LocalFunction {
    LocalFunction::start(
        "hello",
        Path::new(env!("CARGO_BIN_EXE_hello-lambda")),
        &[],
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn invokes_a_real_binary_and_records_its_cold_start() {
    let function = hello().await;
    let cold = function.wait_first_poll(Duration::from_secs(10)).await;
    assert!(cold.is_some(), "the binary polled the Runtime API");
    let first = function.invoke(&json!({"name": "custody"})).await.unwrap();
    assert_eq!(first["hello"], "custody");
    let second = function.invoke(&json!({"name": "again"})).await.unwrap();
    assert_eq!(second["hello"], "again");
    assert_ne!(
        first["request_id"], second["request_id"],
        "each invocation has its own id"
    );
    function.stop().await;
}

#[tokio::test]
async fn a_handler_error_is_reported_as_an_invocation_error() {
    let function = hello().await;
    let err = function.invoke(&json!({"fail": true})).await.unwrap_err();
    match err {
        InvokeError::Function { message, .. } => assert!(message.contains("asked to fail")),
        other => panic!("unexpected: {other}"),
    }
    // The sandbox survives the error and serves the next event.
    assert_eq!(
        function.invoke(&json!({"name": "x"})).await.unwrap()["hello"],
        "x"
    );
}

#[tokio::test]
async fn a_dead_function_times_out_instead_of_hanging() {
    let function = LocalFunction::start(
        "missing",
        Path::new("/bin/true"),
        &[],
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let err = function.invoke(&json!({})).await.unwrap_err();
    assert!(matches!(err, InvokeError::Timeout(..)), "{err}");
}
