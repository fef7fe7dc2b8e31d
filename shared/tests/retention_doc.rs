//! `docs/RETENTION.md` is generated from the retention table (`custody::retention`):
//! each class, its promise, its number, the mechanism that keeps it and the test that
//! proves it. This test fails when the file is stale; regenerate it with
//! `CUSTODY_WRITE_DOCS=1 cargo test -p custody --test retention_doc`.

use custody::retention::{
    ABORT_INCOMPLETE_MULTIPART_DAYS, NONCURRENT_VERSION_DAYS, Period, RetentionClass,
};

fn number(period: Period) -> String {
    match period {
        Period::Minutes(m) => format!("{m} minutes"),
        Period::Days(d) => format!("{d} days"),
        Period::AtLeastDays(d) => format!("at least {d} days (never deleted automatically)"),
    }
}

fn render() -> String {
    let mut out = String::from(
        "# Retention\n\n\
         Generated from the retention table (`shared/src/kernel/retention.rs`) by\n\
         `shared/tests/retention_doc.rs`, which fails when this file is stale. Regenerate:\n\
         `CUSTODY_WRITE_DOCS=1 cargo test -p custody --test retention_doc`.\n\n\
         | class | promise | number | mechanism | proof |\n|---|---|---|---|---|\n",
    );
    for class in RetentionClass::ALL {
        let (promise, mechanism, proof) = (class.promise(), class.mechanism(), class.proof());
        out.push_str(&format!(
            "| `{}` | {promise} | {} | {mechanism} | {proof} |\n",
            class.name(),
            number(class.period())
        ));
    }
    out.push_str(&format!(
        "\nEvery bucket also expires noncurrent object versions after \
         {NONCURRENT_VERSION_DAYS} day(s) and aborts unfinished multipart uploads after \
         {ABORT_INCOMPLETE_MULTIPART_DAYS} day(s), so expired data does not linger as an \
         old version.\n\n\
         The HTTP API has no access logging enabled, so no access log is kept; each \
         function logs the requests it serves, kept as `function-log`.\n"
    ));
    out
}

#[test]
fn retention_doc_is_generated_from_the_table() {
    let path = custody_local::repo_root().join("docs/RETENTION.md");
    let want = render();
    if std::env::var_os("CUSTODY_WRITE_DOCS").is_some() {
        std::fs::write(&path, &want).expect("write docs/RETENTION.md");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/RETENTION.md is stale: CUSTODY_WRITE_DOCS=1 cargo test -p custody --test retention_doc"
    );
}

#[test]
fn every_proof_names_a_file_that_exists() {
    let root = custody_local::repo_root();
    for class in RetentionClass::ALL {
        let mut named = 0;
        for quoted in class.proof().split('`').skip(1).step_by(2) {
            // `template.rs::test_name` names the template test; paths are repo-relative.
            let file = quoted.split("::").next().unwrap_or(quoted);
            let path = match file {
                "template.rs" => root.join("shared/tests/integration/template.rs"),
                _ => root.join(file),
            };
            assert!(path.is_file(), "{class:?}: proof {quoted} names no file");
            if let Some(test) = quoted.split("::").nth(1) {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    text.contains(&format!("fn {test}(")),
                    "{class:?}: {file} has no test {test}"
                );
            }
            named += 1;
        }
        assert!(named > 0, "{class:?} names no proof");
    }
}
