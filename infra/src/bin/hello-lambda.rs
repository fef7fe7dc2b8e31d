//! The smallest `lambda_runtime` function, built with the workspace's profiles: the
//! baseline of the cold-start benchmark, and the function the local Runtime API's own
//! tests run. It echoes `{"name": …}` and fails on `{"fail": true}`.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    if event.payload["fail"] == json!(true) {
        return Err("asked to fail".into());
    }
    Ok(json!({ "hello": event.payload["name"], "request_id": event.context.request_id }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
