//! Provisions the emulator from `template.yaml`: every table, bucket, KMS key and
//! secret the template declares, with the properties it declares (keys, GSIs, TTL,
//! streams, PITR, encryption, versioning, lifecycle rules, policies).
//!
//! `Stage` is the isolation prefix: names in the template are `!Sub`s over it, so
//! each test (or `make up`) gets its own copy of every resource. Resource types the
//! emulator cannot run (functions, the HTTP API) are listed as skipped.

use std::collections::BTreeMap;
use std::path::Path;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types as ddb;
use aws_sdk_s3::types as s3;
use custody::aws::{Clients, error_text};
use custody::config::Config;
use rand::distr::{Alphanumeric, SampleString};
use serde_yaml::Value;

use crate::{ACCOUNT_ID, REGION};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("template: {0}")]
    Template(String),
    #[error("creating {resource}: {message}")]
    Aws { resource: String, message: String },
    #[error("functions' environment: {0}")]
    Config(#[from] custody::config::ConfigError),
}

fn template_err(msg: impl Into<String>) -> ProvisionError {
    ProvisionError::Template(msg.into())
}

fn aws_err<E, R>(resource: &str, err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> ProvisionError
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    ProvisionError::Aws {
        resource: resource.to_owned(),
        message: error_text(err),
    }
}

/// What a logical resource became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Physical {
    pub kind: String,
    /// What `!Ref` gives.
    pub id: String,
    /// What `!GetAtt X.Arn` gives.
    pub arn: String,
}

#[derive(Debug, Clone)]
pub struct Provisioned {
    pub stage: String,
    pub resources: BTreeMap<String, Physical>,
    pub skipped: Vec<String>,
    /// What was applied differently from the template, and why.
    pub adjusted: Vec<String>,
    /// The functions' environment (template `Globals`), resolved.
    pub environment: BTreeMap<String, String>,
    pub config: Config,
}

/// Reads and parses a template.
pub fn load_template(path: &Path) -> Result<Value, ProvisionError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| template_err(format!("cannot read {}: {e}", path.display())))?;
    serde_yaml::from_str(&text).map_err(|e| template_err(format!("{}: {e}", path.display())))
}

/// Creation order: a resource may refer only to kinds created before it.
const ORDER: [&str; 8] = [
    "AWS::KMS::Key",
    "AWS::KMS::Alias",
    "AWS::SQS::Queue",
    "AWS::SecretsManager::Secret",
    "AWS::DynamoDB::Table",
    "AWS::S3::Bucket",
    "AWS::S3::BucketPolicy",
    "AWS::Scheduler::ScheduleGroup",
];

struct Resolver<'a> {
    stage: &'a str,
    resources: &'a BTreeMap<String, Physical>,
    /// Template parameters other than `Stage`: their `Default`, else `local-<name>`.
    parameters: BTreeMap<String, String>,
}

fn parameters(template: &Value) -> BTreeMap<String, String> {
    template
        .get("Parameters")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(name, spec)| {
            let name = name.as_str()?.to_owned();
            let value = match spec.get("Default") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => format!("local-{name}"),
            };
            Some((name, value))
        })
        .collect()
}

impl Resolver<'_> {
    fn pseudo(&self, name: &str) -> Option<String> {
        Some(match name {
            "Stage" => self.stage.to_owned(),
            "AWS::AccountId" => ACCOUNT_ID.to_owned(),
            "AWS::Region" => REGION.to_owned(),
            "AWS::Partition" => "aws".to_owned(),
            "AWS::URLSuffix" => "amazonaws.com".to_owned(),
            "AWS::StackName" => format!("custody-{}", self.stage),
            other => {
                return self
                    .resources
                    .get(other)
                    .map(|p| p.id.clone())
                    .or_else(|| self.parameters.get(other).cloned());
            }
        })
    }

    fn get_att(&self, target: &str) -> Option<String> {
        let (logical, attribute) = target.split_once('.')?;
        let physical = self.resources.get(logical)?;
        match attribute {
            "Arn" => Some(physical.arn.clone()),
            _ => None,
        }
    }

    /// Resolves a scalar or an intrinsic function to a string.
    fn string(&self, value: &Value) -> Result<String, ProvisionError> {
        match value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                let arg = tagged
                    .value
                    .as_str()
                    .ok_or_else(|| template_err(format!("{tag} needs a string argument")))?;
                let resolved = match tag.as_str() {
                    "!Ref" => self.pseudo(arg),
                    "!GetAtt" => self.get_att(arg),
                    "!Sub" => Some(self.sub(arg)?),
                    _ => None,
                };
                resolved.ok_or_else(|| template_err(format!("cannot resolve {tag} {arg}")))
            }
            other => Err(template_err(format!("expected a string, got {other:?}"))),
        }
    }

    fn sub(&self, text: &str) -> Result<String, ProvisionError> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| template_err(format!("unclosed ${{ in {text}")))?;
            let name = &after[..end];
            let value = if name.contains('.') {
                self.get_att(name)
            } else {
                self.pseudo(name)
            };
            out.push_str(
                &value.ok_or_else(|| template_err(format!("cannot resolve ${{{name}}}")))?,
            );
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Resolves every intrinsic in a tree, to JSON (for policies).
    fn json(&self, value: &Value) -> Result<serde_json::Value, ProvisionError> {
        Ok(match value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(_) | Value::String(_) | Value::Tagged(_) => {
                serde_json::Value::String(self.string(value)?)
            }
            Value::Sequence(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|v| self.json(v))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Mapping(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    let key = k
                        .as_str()
                        .ok_or_else(|| template_err("non-string key in a policy"))?;
                    out.insert(key.to_owned(), self.json(v)?);
                }
                serde_json::Value::Object(out)
            }
        })
    }
}

fn prop<'a>(props: &'a Value, name: &str) -> Option<&'a Value> {
    props.get(name)
}

fn prop_str(
    resolver: &Resolver,
    props: &Value,
    name: &str,
) -> Result<Option<String>, ProvisionError> {
    prop(props, name).map(|v| resolver.string(v)).transpose()
}

fn prop_bool(props: &Value, name: &str) -> bool {
    prop(props, name).and_then(Value::as_bool).unwrap_or(false)
}

fn prop_i32(props: &Value, name: &str) -> Option<i32> {
    prop(props, name)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
}

/// Provisions every resource of the template at `path` with `stage` as the prefix.
pub async fn provision(
    sdk: &SdkConfig,
    path: &Path,
    stage: &str,
) -> Result<Provisioned, ProvisionError> {
    let template = load_template(path)?;
    let clients = Clients::new(sdk);
    let declared = template
        .get("Resources")
        .and_then(Value::as_mapping)
        .ok_or_else(|| template_err("no Resources"))?;

    let mut resources = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut adjusted = Vec::new();
    for kind in ORDER {
        for (logical, resource) in declared {
            let logical = logical.as_str().unwrap_or_default().to_owned();
            if resource.get("Type").and_then(Value::as_str) != Some(kind) {
                continue;
            }
            let empty = Value::Mapping(Default::default());
            let props = resource.get("Properties").unwrap_or(&empty);
            let resolver = Resolver {
                stage,
                resources: &resources,
                parameters: parameters(&template),
            };
            let physical = match kind {
                "AWS::KMS::Key" => create_key(&clients, &logical, props).await?,
                "AWS::KMS::Alias" => create_alias(&clients, &resolver, &logical, props).await?,
                "AWS::SecretsManager::Secret" => {
                    create_secret(&clients, &resolver, &logical, props).await?
                }
                "AWS::DynamoDB::Table" => {
                    create_table(&clients, &resolver, &logical, props).await?
                }
                "AWS::S3::Bucket" => create_bucket(&clients, &resolver, &logical, props).await?,
                "AWS::Scheduler::ScheduleGroup" => {
                    create_schedule_group(&clients, &resolver, &logical, props).await?
                }
                "AWS::SQS::Queue" => create_queue(sdk, &resolver, &logical, props).await?,
                "AWS::S3::BucketPolicy" => {
                    put_bucket_policy(&clients, &resolver, &logical, props, &mut adjusted).await?
                }
                _ => unreachable!("ORDER lists only handled kinds"),
            };
            resources.insert(logical, physical);
        }
    }
    for (logical, resource) in declared {
        let kind = resource
            .get("Type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !ORDER.contains(&kind) {
            skipped.push(format!("{} ({kind})", logical.as_str().unwrap_or_default()));
        }
    }

    let resolver = Resolver {
        stage,
        resources: &resources,
        parameters: parameters(&template),
    };
    let mut environment = BTreeMap::new();
    if let Some(vars) = template
        .get("Globals")
        .and_then(|g| g.get("Function"))
        .and_then(|f| f.get("Environment"))
        .and_then(|e| e.get("Variables"))
        .and_then(Value::as_mapping)
    {
        for (name, value) in vars {
            let name = name.as_str().unwrap_or_default().to_owned();
            environment.insert(name, resolver.string(value)?);
        }
    }
    let config = Config::from_lookup(|name| environment.get(name).cloned())?;
    Ok(Provisioned {
        stage: stage.to_owned(),
        resources,
        skipped,
        adjusted,
        environment,
        config,
    })
}

async fn create_key(
    clients: &Clients,
    logical: &str,
    props: &Value,
) -> Result<Physical, ProvisionError> {
    let spec = props
        .get("KeySpec")
        .and_then(Value::as_str)
        .unwrap_or("SYMMETRIC_DEFAULT");
    let usage = props
        .get("KeyUsage")
        .and_then(Value::as_str)
        .unwrap_or("ENCRYPT_DECRYPT");
    let out = clients
        .kms
        .create_key()
        .key_spec(spec.into())
        .key_usage(usage.into())
        .description(
            props
                .get("Description")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )
        .send()
        .await
        .map_err(|e| aws_err(logical, &e))?;
    let meta = out
        .key_metadata
        .ok_or_else(|| template_err(format!("{logical}: no key metadata")))?;
    if prop_bool(props, "EnableKeyRotation") {
        clients
            .kms
            .enable_key_rotation()
            .key_id(&meta.key_id)
            .send()
            .await
            .map_err(|e| aws_err(logical, &e))?;
    }
    Ok(Physical {
        kind: "AWS::KMS::Key".into(),
        arn: meta.arn.clone().unwrap_or_default(),
        id: meta.key_id,
    })
}

async fn create_alias(
    clients: &Clients,
    resolver: &Resolver<'_>,
    logical: &str,
    props: &Value,
) -> Result<Physical, ProvisionError> {
    let name = prop_str(resolver, props, "AliasName")?
        .ok_or_else(|| template_err(format!("{logical}: AliasName")))?;
    let target = prop_str(resolver, props, "TargetKeyId")?
        .ok_or_else(|| template_err(format!("{logical}: TargetKeyId")))?;
    clients
        .kms
        .create_alias()
        .alias_name(&name)
        .target_key_id(target)
        .send()
        .await
        .map_err(|e| aws_err(logical, &e))?;
    Ok(Physical {
        kind: "AWS::KMS::Alias".into(),
        arn: format!("arn:aws:kms:{REGION}:{ACCOUNT_ID}:{name}"),
        id: name,
    })
}

async fn create_secret(
    clients: &Clients,
    resolver: &Resolver<'_>,
    logical: &str,
    props: &Value,
) -> Result<Physical, ProvisionError> {
    let name = prop_str(resolver, props, "Name")?
        .ok_or_else(|| template_err(format!("{logical}: Name")))?;
    let length = props
        .get("GenerateSecretString")
        .and_then(|g| g.get("PasswordLength"))
        .and_then(Value::as_u64)
        .unwrap_or(32) as usize;
    // Like GenerateSecretString: random, never a fixed value, even locally.
    let secret = Alphanumeric.sample_string(&mut rand::rng(), length);
    let out = clients
        .secrets
        .create_secret()
        .name(&name)
        .set_kms_key_id(prop_str(resolver, props, "KmsKeyId")?)
        .secret_string(secret)
        .send()
        .await
        .map_err(|e| aws_err(logical, &e))?;
    let arn = out.arn.unwrap_or_default();
    Ok(Physical {
        kind: "AWS::SecretsManager::Secret".into(),
        // `!Ref` of a secret is its ARN.
        id: arn.clone(),
        arn,
    })
}

fn key_schema(value: Option<&Value>) -> Result<Vec<ddb::KeySchemaElement>, ProvisionError> {
    value
        .and_then(Value::as_sequence)
        .ok_or_else(|| template_err("KeySchema"))?
        .iter()
        .map(|k| {
            ddb::KeySchemaElement::builder()
                .attribute_name(
                    k.get("AttributeName")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )
                .key_type(
                    k.get("KeyType")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .into(),
                )
                .build()
                .map_err(|e| template_err(e.to_string()))
        })
        .collect()
}

async fn create_table(
    clients: &Clients,
    resolver: &Resolver<'_>,
    logical: &str,
    props: &Value,
) -> Result<Physical, ProvisionError> {
    let name = prop_str(resolver, props, "TableName")?
        .ok_or_else(|| template_err(format!("{logical}: TableName")))?;
    let definitions = props
        .get("AttributeDefinitions")
        .and_then(Value::as_sequence)
        .ok_or_else(|| template_err(format!("{logical}: AttributeDefinitions")))?
        .iter()
        .map(|a| {
            ddb::AttributeDefinition::builder()
                .attribute_name(
                    a.get("AttributeName")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )
                .attribute_type(
                    a.get("AttributeType")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .into(),
                )
                .build()
                .map_err(|e| template_err(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = clients
        .dynamodb
        .create_table()
        .table_name(&name)
        .billing_mode(
            props
                .get("BillingMode")
                .and_then(Value::as_str)
                .unwrap_or("PAY_PER_REQUEST")
                .into(),
        )
        .set_attribute_definitions(Some(definitions))
        .set_key_schema(Some(key_schema(props.get("KeySchema"))?))
        .deletion_protection_enabled(prop_bool(props, "DeletionProtectionEnabled"));
    for gsi in props
        .get("GlobalSecondaryIndexes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let projection = gsi.get("Projection");
        let projection_type = projection
            .and_then(|p| p.get("ProjectionType"))
            .and_then(Value::as_str)
            .unwrap_or("ALL");
        let non_key: Option<Vec<String>> = projection
            .and_then(|p| p.get("NonKeyAttributes"))
            .and_then(Value::as_sequence)
            .map(|attrs| {
                attrs
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect()
            });
        request = request.global_secondary_indexes(
            ddb::GlobalSecondaryIndex::builder()
                .index_name(
                    gsi.get("IndexName")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )
                .set_key_schema(Some(key_schema(gsi.get("KeySchema"))?))
                .projection(
                    ddb::Projection::builder()
                        .projection_type(projection_type.into())
                        .set_non_key_attributes(non_key)
                        .build(),
                )
                .build()
                .map_err(|e| template_err(e.to_string()))?,
        );
    }
    if let Some(stream) = props.get("StreamSpecification") {
        let view = stream
            .get("StreamViewType")
            .and_then(Value::as_str)
            .unwrap_or("NEW_AND_OLD_IMAGES");
        request = request.stream_specification(
            ddb::StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(view.into())
                .build()
                .map_err(|e| template_err(e.to_string()))?,
        );
    }
    if let Some(sse) = props.get("SSESpecification") {
        request = request.sse_specification(
            ddb::SseSpecification::builder()
                .enabled(prop_bool(sse, "SSEEnabled"))
                .set_sse_type(sse.get("SSEType").and_then(Value::as_str).map(Into::into))
                .set_kms_master_key_id(prop_str(resolver, sse, "KMSMasterKeyId")?)
                .build(),
        );
    }
    let out = request.send().await.map_err(|e| aws_err(logical, &e))?;
    if let Some(ttl) = props.get("TimeToLiveSpecification") {
        clients
            .dynamodb
            .update_time_to_live()
            .table_name(&name)
            .time_to_live_specification(
                ddb::TimeToLiveSpecification::builder()
                    .attribute_name(
                        ttl.get("AttributeName")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    )
                    .enabled(prop_bool(ttl, "Enabled"))
                    .build()
                    .map_err(|e| template_err(e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| aws_err(logical, &e))?;
    }
    if let Some(pitr) = props.get("PointInTimeRecoverySpecification") {
        clients
            .dynamodb
            .update_continuous_backups()
            .table_name(&name)
            .point_in_time_recovery_specification(
                ddb::PointInTimeRecoverySpecification::builder()
                    .point_in_time_recovery_enabled(prop_bool(pitr, "PointInTimeRecoveryEnabled"))
                    .set_recovery_period_in_days(prop_i32(pitr, "RecoveryPeriodInDays"))
                    .build()
                    .map_err(|e| template_err(e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| aws_err(logical, &e))?;
    }
    let arn = out
        .table_description
        .and_then(|d| d.table_arn)
        .unwrap_or_else(|| format!("arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}"));
    Ok(Physical {
        kind: "AWS::DynamoDB::Table".into(),
        id: name,
        arn,
    })
}

fn lifecycle_rule(
    resolver: &Resolver<'_>,
    rule: &Value,
) -> Result<s3::LifecycleRule, ProvisionError> {
    let prefix = prop_str(resolver, rule, "Prefix")?;
    let tags = rule
        .get("TagFilters")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|t| {
            s3::Tag::builder()
                .key(t.get("Key").and_then(Value::as_str).unwrap_or_default())
                .value(t.get("Value").and_then(Value::as_str).unwrap_or_default())
                .build()
                .map_err(|e| template_err(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let filter = match (prefix, tags.len()) {
        (prefix, 0) => s3::LifecycleRuleFilter::builder()
            .prefix(prefix.unwrap_or_default())
            .build(),
        (None, 1) => s3::LifecycleRuleFilter::builder()
            .tag(tags[0].clone())
            .build(),
        (prefix, _) => s3::LifecycleRuleFilter::builder()
            .and(
                s3::LifecycleRuleAndOperator::builder()
                    .set_prefix(prefix)
                    .set_tags(Some(tags))
                    .build(),
            )
            .build(),
    };
    let mut builder = s3::LifecycleRule::builder()
        .set_id(prop_str(resolver, rule, "Id")?)
        .status(
            rule.get("Status")
                .and_then(Value::as_str)
                .unwrap_or("Enabled")
                .into(),
        )
        .filter(filter);
    if let Some(days) = prop_i32(rule, "ExpirationInDays") {
        builder = builder.expiration(s3::LifecycleExpiration::builder().days(days).build());
    } else if prop_bool(rule, "ExpiredObjectDeleteMarker") {
        builder = builder.expiration(
            s3::LifecycleExpiration::builder()
                .expired_object_delete_marker(true)
                .build(),
        );
    }
    if let Some(days) = rule
        .get("NoncurrentVersionExpiration")
        .and_then(|n| prop_i32(n, "NoncurrentDays"))
    {
        builder = builder.noncurrent_version_expiration(
            s3::NoncurrentVersionExpiration::builder()
                .noncurrent_days(days)
                .build(),
        );
    }
    if let Some(days) = rule
        .get("AbortIncompleteMultipartUpload")
        .and_then(|a| prop_i32(a, "DaysAfterInitiation"))
    {
        builder = builder.abort_incomplete_multipart_upload(
            s3::AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(days)
                .build(),
        );
    }
    builder.build().map_err(|e| template_err(e.to_string()))
}

async fn create_bucket(
    clients: &Clients,
    resolver: &Resolver<'_>,
    logical: &str,
    props: &Value,
) -> Result<Physical, ProvisionError> {
    let name = prop_str(resolver, props, "BucketName")?
        .ok_or_else(|| template_err(format!("{logical}: BucketName")))?;
    clients
        .s3
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .map_err(|e| aws_err(logical, &e))?;
    if let Some(status) = props
        .get("VersioningConfiguration")
        .and_then(|v| v.get("Status"))
        .and_then(Value::as_str)
    {
        clients
            .s3
            .put_bucket_versioning()
            .bucket(&name)
            .versioning_configuration(
                s3::VersioningConfiguration::builder()
                    .status(status.into())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| aws_err(logical, &e))?;
    }
    if let Some(rules) = props
        .get("BucketEncryption")
        .and_then(|e| e.get("ServerSideEncryptionConfiguration"))
        .and_then(Value::as_sequence)
    {
        let mut config = s3::ServerSideEncryptionConfiguration::builder();
        for rule in rules {
            let default = rule
                .get("ServerSideEncryptionByDefault")
                .ok_or_else(|| template_err(format!("{logical}: ServerSideEncryptionByDefault")))?;
            config = config.rules(
                s3::ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(
                        s3::ServerSideEncryptionByDefault::builder()
                            .sse_algorithm(
                                default
                                    .get("SSEAlgorithm")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .into(),
                            )
                            .set_kms_master_key_id(prop_str(resolver, default, "KMSMasterKeyID")?)
                            .build()
                            .map_err(|e| template_err(e.to_string()))?,
                    )
                    .bucket_key_enabled(prop_bool(rule, "BucketKeyEnabled"))
                    .build(),
            );
        }
        clients
            .s3
            .put_bucket_encryption()
            .bucket(&name)
            .server_side_encryption_configuration(
                config.build().map_err(|e| template_err(e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| aws_err(logical, &e))?;
    }
    if let Some(block) = props.get("PublicAccessBlockConfiguration") {
        clients
            .s3
            .put_public_access_block()
            .bucket(&name)
            .public_access_block_configuration(
                s3::PublicAccessBlockConfiguration::builder()
                    .block_public_acls(prop_bool(block, "BlockPublicAcls"))
                    .block_public_policy(prop_bool(block, "BlockPublicPolicy"))
                    .ignore_public_acls(prop_bool(block, "IgnorePublicAcls"))
                    .restrict_public_buckets(prop_bool(block, "RestrictPublicBuckets"))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| aws_err(logical, &e))?;
    }
    if let Some(rules) = props
        .get("LifecycleConfiguration")
        .and_then(|l| l.get("Rules"))
        .and_then(Value::as_sequence)
    {
        let rules = rules
            .iter()
            .map(|rule| lifecycle_rule(resolver, rule))
            .collect::<Result<Vec<_>, _>>()?;
        clients
            .s3
            .put_bucket_lifecycle_configuration()
            .bucket(&name)
            .lifecycle_configuration(
                s3::BucketLifecycleConfiguration::builder()
                    .set_rules(Some(rules))
                    .build()
                    .map_err(|e| template_err(e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| aws_err(logical, &e))?;
    }
    Ok(Physical {
        kind: "AWS::S3::Bucket".into(),
        arn: format!("arn:aws:s3:::{name}"),
        id: name,
    })
}

async fn put_bucket_policy(
    clients: &Clients,
    resolver: &Resolver<'_>,
    logical: &str,
    props: &Value,
    adjusted: &mut Vec<String>,
) -> Result<Physical, ProvisionError> {
    let bucket = prop_str(resolver, props, "Bucket")?
        .ok_or_else(|| template_err(format!("{logical}: Bucket")))?;
    let mut document = props
        .get("PolicyDocument")
        .ok_or_else(|| template_err(format!("{logical}: PolicyDocument")))?
        .clone();
    // moto enforces the Deny statements of a bucket policy on object requests but
    // ignores their Condition (checked in moto 5.2.5, s3/responses.py), so the
    // TLS-only and SSE-KMS-only statements would deny every local request. A
    // statement with a condition is therefore left out locally, and reported. They
    // go before resolving: a condition may name what the emulator cannot create
    // (the console bucket's reader is the CloudFront distribution's ARN).
    if let Some(statements) = document
        .get_mut("Statement")
        .and_then(Value::as_sequence_mut)
    {
        statements.retain(|statement| {
            let conditional = statement.get("Condition").is_some();
            if conditional {
                adjusted.push(format!(
                    "{logical}: statement {} not applied (the emulator ignores conditions)",
                    statement.get("Sid").and_then(Value::as_str).unwrap_or("?")
                ));
            }
            !conditional
        });
    }
    let document = resolver.json(&document)?;
    let physical = Physical {
        kind: "AWS::S3::BucketPolicy".into(),
        id: bucket.clone(),
        arn: format!("arn:aws:s3:::{bucket}"),
    };
    let nothing_left = document
        .get("Statement")
        .and_then(|s| s.as_array())
        .is_some_and(|s| s.is_empty());
    if nothing_left {
        return Ok(physical);
    }
    clients
        .s3
        .put_bucket_policy()
        .bucket(&bucket)
        .policy(document.to_string())
        .send()
        .await
        .map_err(|e| aws_err(logical, &e))?;
    Ok(physical)
}

async fn create_schedule_group(
    clients: &Clients,
    resolver: &Resolver<'_>,
    logical: &str,
    props: &Value,
) -> Result<Physical, ProvisionError> {
    let name = prop_str(resolver, props, "Name")?
        .ok_or_else(|| template_err(format!("{logical}: Name")))?;
    let out = clients
        .scheduler
        .create_schedule_group()
        .name(&name)
        .send()
        .await
        .map_err(|e| aws_err(logical, &e))?;
    Ok(Physical {
        kind: "AWS::Scheduler::ScheduleGroup".into(),
        id: name,
        arn: out.schedule_group_arn,
    })
}

/// A queue with the template's attributes (retention, SSE-KMS key). `!Ref` gives its
/// URL, `!GetAtt .Arn` its ARN, as CloudFormation does.
async fn create_queue(
    sdk: &SdkConfig,
    resolver: &Resolver<'_>,
    logical: &str,
    props: &Value,
) -> Result<Physical, ProvisionError> {
    use aws_sdk_sqs::types::QueueAttributeName as Attr;
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let name = prop_str(resolver, props, "QueueName")?
        .unwrap_or_else(|| format!("{}-{logical}", resolver.stage));
    let mut request = sqs.create_queue().queue_name(&name);
    for (property, attribute) in [
        ("MessageRetentionPeriod", Attr::MessageRetentionPeriod),
        ("KmsMasterKeyId", Attr::KmsMasterKeyId),
        (
            "KmsDataKeyReusePeriodSeconds",
            Attr::KmsDataKeyReusePeriodSeconds,
        ),
        ("VisibilityTimeout", Attr::VisibilityTimeout),
    ] {
        if let Some(value) = prop_str(resolver, props, property)? {
            request = request.attributes(attribute, value);
        }
    }
    let url = request
        .send()
        .await
        .map_err(|e| aws_err(logical, &e))?
        .queue_url
        .ok_or_else(|| template_err(format!("{logical}: no queue URL")))?;
    Ok(Physical {
        kind: "AWS::SQS::Queue".into(),
        id: url,
        arn: format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"),
    })
}

/// Physical ids for resources the emulator does not run (functions, roles, the HTTP
/// API), so references to them in a function's environment still resolve locally.
fn synthetic(logical: &str, resource: &Value) -> Option<Physical> {
    let kind = resource.get("Type").and_then(Value::as_str)?;
    let name = resource
        .get("Metadata")
        .and_then(|m| m.get("BuildProperties"))
        .and_then(|b| b.get("Binary"))
        .and_then(Value::as_str)
        .unwrap_or(logical)
        .to_owned();
    let (id, arn) = match kind {
        "AWS::Serverless::Function" | "AWS::Lambda::Function" => (
            name.clone(),
            format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"),
        ),
        "AWS::IAM::Role" => (
            logical.to_owned(),
            format!("arn:aws:iam::{ACCOUNT_ID}:role/{logical}"),
        ),
        other => (
            logical.to_owned(),
            format!("arn:aws:local:{REGION}:{ACCOUNT_ID}:{other}/{logical}"),
        ),
    };
    Some(Physical {
        kind: kind.to_owned(),
        id,
        arn,
    })
}

/// Deployed function name → local binary, for every function of the template: its
/// binary name, and its `FunctionName` resolved for `stage` where it sets one (what a
/// schedule's target ARN names).
pub fn function_names(template: &Value, stage: &str) -> std::collections::HashMap<String, String> {
    let resources = BTreeMap::new();
    let resolver = Resolver {
        stage,
        resources: &resources,
        parameters: parameters(template),
    };
    let mut names = std::collections::HashMap::new();
    for (logical, resource) in template
        .get("Resources")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        if resource.get("Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
            continue;
        }
        let Some(physical) = synthetic(logical.as_str().unwrap_or_default(), resource) else {
            continue;
        };
        if let Some(name) = resource
            .get("Properties")
            .and_then(|p| p.get("FunctionName"))
            .and_then(|n| resolver.string(n).ok())
        {
            names.insert(name, physical.id.clone());
        }
        names.insert(physical.id.clone(), physical.id);
    }
    names
}

/// The environment a function runs with: the template's `Globals` plus the function's
/// own `Environment`, resolved against what was provisioned.
pub fn function_environment(
    template: &Value,
    provisioned: &Provisioned,
    binary: &str,
) -> Result<BTreeMap<String, String>, ProvisionError> {
    let declared = template
        .get("Resources")
        .and_then(Value::as_mapping)
        .ok_or_else(|| template_err("no Resources"))?;
    let mut resources = provisioned.resources.clone();
    let mut function = None;
    for (logical, resource) in declared {
        let logical = logical.as_str().unwrap_or_default();
        if !resources.contains_key(logical)
            && let Some(physical) = synthetic(logical, resource)
        {
            if physical.kind == "AWS::Serverless::Function" && physical.id == binary {
                function = Some(resource);
            }
            resources.insert(logical.to_owned(), physical);
        }
    }
    let function =
        function.ok_or_else(|| template_err(format!("no function with binary {binary}")))?;
    let resolver = Resolver {
        stage: &provisioned.stage,
        resources: &resources,
        parameters: parameters(template),
    };
    let mut environment = provisioned.environment.clone();
    if let Some(vars) = function
        .get("Properties")
        .and_then(|p| p.get("Environment"))
        .and_then(|e| e.get("Variables"))
        .and_then(Value::as_mapping)
    {
        for (name, value) in vars {
            environment.insert(
                name.as_str().unwrap_or_default().to_owned(),
                resolver.string(value)?,
            );
        }
    }
    Ok(environment)
}
