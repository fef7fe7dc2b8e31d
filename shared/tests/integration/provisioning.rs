//! The emulator provisioned from template.yaml has every resource, with the
//! properties the template states.

use aws_sdk_dynamodb::types::{ProjectionType, StreamViewType, TimeToLiveStatus};
use aws_sdk_kms::types::KeySpec;
use aws_sdk_s3::types::ServerSideEncryption;
use custody::retention::{RetentionClass, TTL_ATTRIBUTE};
use custody_local::harness::TestStack;

#[tokio::test]
async fn every_resource_exists_as_the_template_states() {
    let stack = TestStack::new().await;
    let ddb = &stack.clients.dynamodb;
    let s3 = &stack.clients.s3;
    let kms = &stack.clients.kms;
    let resources = &stack.provisioned.resources;

    // The main table: keys, GSI, stream, TTL, PITR.
    let table = ddb
        .describe_table()
        .table_name(&stack.config.table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let key_names: Vec<_> = table
        .key_schema()
        .iter()
        .map(|k| k.attribute_name().to_owned())
        .collect();
    assert_eq!(key_names, ["pk", "sk"]);
    let gsi = table
        .global_secondary_indexes()
        .iter()
        .find(|g| g.index_name() == Some("by_subject"))
        .expect("by_subject GSI");
    let gsi_keys: Vec<_> = gsi
        .key_schema()
        .iter()
        .map(|k| k.attribute_name().to_owned())
        .collect();
    assert_eq!(gsi_keys, ["subject_pk", "subject_sk"]);
    let projection = gsi.projection().unwrap();
    assert_eq!(projection.projection_type(), Some(&ProjectionType::Include));
    assert!(
        projection
            .non_key_attributes()
            .contains(&TTL_ATTRIBUTE.to_owned())
    );
    let stream = table.stream_specification().expect("stream");
    assert!(stream.stream_enabled());
    assert_eq!(
        stream.stream_view_type(),
        Some(&StreamViewType::NewAndOldImages)
    );
    assert!(table.latest_stream_arn().is_some());

    let ttl = ddb
        .describe_time_to_live()
        .table_name(&stack.config.table)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .unwrap();
    assert_eq!(ttl.attribute_name(), Some(TTL_ATTRIBUTE));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));

    let backups = ddb
        .describe_continuous_backups()
        .table_name(&stack.config.table)
        .send()
        .await
        .unwrap();
    let pitr = backups
        .continuous_backups_description()
        .and_then(|d| d.point_in_time_recovery_description())
        .and_then(|p| p.point_in_time_recovery_status())
        .map(|s| s.as_str().to_owned());
    assert_eq!(pitr.as_deref(), Some("ENABLED"));

    // The audit table: its own keys and no TTL.
    let audit = ddb
        .describe_table()
        .table_name(&stack.config.audit_table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let audit_keys: Vec<_> = audit
        .key_schema()
        .iter()
        .map(|k| k.attribute_name().to_owned())
        .collect();
    assert_eq!(audit_keys, [custody::audit::PARTITION_KEY, "seq"]);
    let audit_ttl = ddb
        .describe_time_to_live()
        .table_name(&stack.config.audit_table)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .and_then(|d| d.time_to_live_status().cloned());
    // Activity segments expire by TTL; evidence entries carry no expires_at.
    assert_eq!(
        audit_ttl,
        Some(TimeToLiveStatus::Enabled),
        "audit activity must expire"
    );

    // Buckets: versioning, SSE-KMS with the data key, public access blocked,
    // lifecycle rules as stated, TLS-only policy.
    let data_key_arn = &resources["DataKey"].arn;
    // One rule per imports-bucket retention class, plus old versions with unfinished
    // uploads, and expired delete markers.
    let import_rules = custody::retention::RetentionClass::ALL
        .into_iter()
        .filter(|c| c.store() == custody::retention::Store::ImportsBucket)
        .count()
        + 2;
    for (bucket, expected_rules) in [
        (&stack.config.imports_bucket, import_rules),
        (&stack.config.dsar_results_bucket, 1usize),
    ] {
        // Versioning, checked by behaviour (moto answers GetBucketVersioning with an XML
        // root the SDK rejects): two writes of one key leave two versions.
        for body in ["one", "two"] {
            s3.put_object()
                .bucket(bucket)
                .key("probe")
                .body(body.as_bytes().to_vec().into())
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .send()
                .await
                .unwrap();
        }
        let versions = s3
            .list_object_versions()
            .bucket(bucket)
            .prefix("probe")
            .send()
            .await
            .unwrap();
        assert_eq!(versions.versions().len(), 2, "{bucket} keeps versions");

        let encryption = s3
            .get_bucket_encryption()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        let rule = &encryption
            .server_side_encryption_configuration()
            .unwrap()
            .rules()[0];
        let default = rule.apply_server_side_encryption_by_default().unwrap();
        assert_eq!(
            default.sse_algorithm(),
            &ServerSideEncryption::AwsKms,
            "{bucket}"
        );
        assert_eq!(
            default.kms_master_key_id(),
            Some(data_key_arn.as_str()),
            "{bucket}"
        );

        let block = s3
            .get_public_access_block()
            .bucket(bucket)
            .send()
            .await
            .unwrap()
            .public_access_block_configuration
            .unwrap();
        assert_eq!(block.block_public_acls(), Some(true));
        assert_eq!(block.block_public_policy(), Some(true));
        assert_eq!(block.ignore_public_acls(), Some(true));
        assert_eq!(block.restrict_public_buckets(), Some(true));

        let lifecycle = s3
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        assert_eq!(lifecycle.rules().len(), expected_rules, "{bucket}");
    }
    // The conditional policy statements cannot be evaluated by the emulator; that is
    // reported, not hidden (the template test checks the statements themselves).
    for sid in ["DenyInsecureTransport", "DenyUploadsWithoutKms"] {
        assert!(
            stack.provisioned.adjusted.iter().any(|a| a.contains(sid)),
            "{sid} adjustment reported"
        );
    }
    // Objects written without asking for encryption are encrypted with the data key.
    s3.put_object()
        .bucket(&stack.config.imports_bucket)
        .key("imports/acme/1/plain.csv")
        .body(b"a,b\n".to_vec().into())
        .send()
        .await
        .unwrap();
    let head = s3
        .head_object()
        .bucket(&stack.config.imports_bucket)
        .key("imports/acme/1/plain.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    let lifecycle = s3
        .get_bucket_lifecycle_configuration()
        .bucket(&stack.config.imports_bucket)
        .send()
        .await
        .unwrap();
    for class in RetentionClass::import_classes() {
        let rule = lifecycle
            .rules()
            .iter()
            .find(|r| r.id() == Some(&format!("retention-{}", class.name())))
            .unwrap_or_else(|| panic!("no rule for {class:?}"));
        assert_eq!(
            rule.expiration().and_then(|e| e.days()).map(i64::from),
            class.days()
        );
        assert!(rule.noncurrent_version_expiration().is_some());
        let tags = rule
            .filter()
            .and_then(|f| f.and())
            .map(|a| a.tags().to_vec())
            .unwrap_or_default();
        assert!(
            tags.iter()
                .any(|t| t.key() == "retention-class" && t.value() == class.name())
        );
    }

    // Keys: a rotating symmetric key and an asymmetric signing key.
    let data_key = kms
        .describe_key()
        .key_id(data_key_arn)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(data_key.key_spec(), Some(&KeySpec::SymmetricDefault));
    let rotation = kms
        .get_key_rotation_status()
        .key_id(data_key_arn)
        .send()
        .await
        .unwrap();
    assert!(rotation.key_rotation_enabled());
    let signing = kms
        .describe_key()
        .key_id(&stack.config.signing_key_id)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(signing.key_spec(), Some(&KeySpec::EccNistP256));

    // The pseudonym secret exists and holds a generated value.
    let secret = stack
        .clients
        .secrets
        .get_secret_value()
        .secret_id(&stack.config.pseudonym_secret_id)
        .send()
        .await
        .unwrap();
    assert!(secret.secret_string().map(str::len).unwrap_or(0) >= 32);

    // What the emulator cannot run is named, not silently dropped.
    assert!(
        stack
            .provisioned
            .skipped
            .iter()
            .any(|s| s.starts_with("HttpApi"))
    );
}
