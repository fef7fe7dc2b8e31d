//! Integration tests of the `custody` crate against the AWS emulator, provisioned
//! from template.yaml. One test binary (linking the SDK is slow); each test gets its
//! own copy of every resource, so they run in parallel.

mod audit;
mod faults;
mod idempotency;
mod openapi;
mod openapi_rules;
mod provisioning;
mod schedule;
mod seal;
mod store;
mod template;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

/// Every item of a table, raw, as text: what an attacker with a table dump would see.
pub async fn raw_table_dump(client: &aws_sdk_dynamodb::Client, table: &str) -> String {
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    let mut dump = String::new();
    loop {
        let out = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("scan");
        for item in out.items.unwrap_or_default() {
            dump.push_str(&format!("{item:?}\n"));
        }
        match out.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return dump,
        }
    }
}
