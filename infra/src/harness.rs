//! The test harness: each test gets its own copy of every resource in the template,
//! on one shared emulator, so tests run in parallel without touching each other.

use std::sync::Arc;

use aws_config::SdkConfig;
use custody::aws::{Clients, sdk_config_for_endpoint};
use custody::clock::SharedClock;
use custody::config::Config;

use crate::provision::{Provisioned, provision};
use crate::{REGION, template_path};

/// An isolated copy of the stack for one test.
pub struct TestStack {
    pub endpoint: String,
    pub sdk: SdkConfig,
    pub clients: Clients,
    pub config: Config,
    pub provisioned: Provisioned,
}

impl TestStack {
    /// Starts (or reuses) the emulator and provisions a fresh, uniquely named copy of
    /// the template's resources. Panics with instructions if the emulator cannot run:
    /// a test that needs it must fail, never skip.
    pub async fn new() -> TestStack {
        let endpoint = match crate::emulator::endpoint() {
            Ok(endpoint) => endpoint,
            Err(err) => panic!("{err}"),
        };
        let sdk = sdk_config_for_endpoint(&endpoint, REGION);
        let stage = unique_stage();
        let provisioned = match provision(&sdk, &template_path(), &stage).await {
            Ok(provisioned) => provisioned,
            Err(err) => {
                panic!("provisioning the emulator at {endpoint} from template.yaml failed: {err}")
            }
        };
        TestStack {
            clients: Clients::new(&sdk),
            config: provisioned.config.clone(),
            endpoint,
            sdk,
            provisioned,
        }
    }

    /// The store over this stack's table.
    pub fn store(&self, clock: SharedClock) -> custody::store::Store {
        custody::store::Store::new(self.clients.dynamodb.clone(), &self.config.table, clock)
    }

    pub fn audit(&self, clock: SharedClock) -> custody::audit::AuditLog {
        custody::audit::AuditLog::from_config(&self.clients, &self.config, clock)
    }

    /// The deployment's signing key (certificates, audit checkpoints).
    pub fn signer(&self) -> custody::signing::Signer {
        custody::signing::Signer::new(self.clients.kms.clone(), &self.config.signing_key_id)
    }

    pub fn sealer(&self) -> custody::seal::Sealer {
        custody::seal::Sealer::new(self.clients.kms.clone(), &self.config.data_key_id)
    }

    pub fn schedules(&self) -> custody::schedule::ExportSchedules {
        custody::schedule::ExportSchedules::new(
            self.clients.scheduler.clone(),
            &self.config.schedule_group,
        )
    }

    pub fn system_clock() -> SharedClock {
        Arc::new(custody::clock::SystemClock)
    }
}

/// A stage name unique to this test: lowercase, short enough for bucket names.
pub fn unique_stage() -> String {
    let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
    // The random tail of a ULID: 12 characters are plenty to be unique per run.
    format!("t{}", &id[id.len() - 12..])
}

/// Builds the function binaries and `custody-local`, which a whole local stack runs.
/// `cargo test --workspace --all-targets` builds them already; a test run of one
/// package does not, so stack tests call this first (a no-op when they are fresh).
pub fn build_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(crate::repo_root())
        .args([
            "build",
            "-q",
            "--bins",
            "-p",
            "oauth",
            "-p",
            "export",
            "-p",
            "import",
            "-p",
            "expiry",
            "-p",
            "dsar",
            "-p",
            "dsar-api",
            "-p",
            "custody-local",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the binaries failed");
}
