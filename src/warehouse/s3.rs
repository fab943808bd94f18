//! S3 for the warehouse: one object_store client builder for the tables (registered with
//! delta-rs for `s3://`) and for the ledger and lease, so both see the same bucket the same way.

use deltalake::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory,
    ObjectStoreFactory, ObjectStoreRef, StorageConfig,
};
use deltalake::{DeltaResult, Path};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Once};
use url::Url;

/// Whether the operator chose how S3 writes are made conditional (`AWS_CONDITIONAL_PUT`,
/// as object_store reads it); parstat's choice applies otherwise.
fn conditional_put_chosen() -> bool {
    ["AWS_CONDITIONAL_PUT", "CONDITIONAL_PUT"]
        .iter()
        .any(|k| std::env::var_os(k).is_some())
}

/// A client of the bucket of `url`: endpoint, region and credentials from the usual `AWS_*`
/// variables, then `options` (object_store's keys, any case) over them. Writes that must not
/// overwrite (a commit, a claim, the lease) are conditional puts (`If-None-Match: *`), so two
/// writers of one name exclude each other without a DynamoDB lock.
pub fn client(url: &Url, options: &HashMap<String, String>) -> object_store::Result<AmazonS3> {
    let mut b = AmazonS3Builder::from_env().with_url(url.as_str());
    if !conditional_put_chosen() {
        b = b.with_conditional_put(S3ConditionalPut::ETagMatch);
    }
    for (key, value) in options {
        // Keys object_store does not know (delta-rs's own) are for delta-rs, not the client.
        if let Ok(k) = AmazonS3ConfigKey::from_str(&key.to_ascii_lowercase()) {
            b = b.with_config(k, value);
        }
    }
    b.build()
}

/// Lets delta-rs open `s3://` (and `s3a://`) tables with [`client`] and its default log store,
/// whose commits are conditional puts. Idempotent.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            let url = Url::parse(scheme).expect("a scheme is a URL");
            object_store_factories().insert(url.clone(), Arc::new(S3Tables));
            logstore_factories().insert(url, Arc::new(S3Tables));
        }
    });
}

struct S3Tables;

impl ObjectStoreFactory for S3Tables {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        // delta-rs wants the bucket's root and the table's path in it, and prefixes it itself.
        let store = client(url, &config.raw)?;
        let path = Path::from_url_path(url.path()).map_err(object_store::Error::from)?;
        Ok((Arc::new(store), path))
    }
}

impl LogStoreFactory for S3Tables {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_reach_the_client_in_any_case_and_unknown_keys_are_left_to_delta() {
        let url = Url::parse("s3://parstat/wh/dossiers/").unwrap();
        let options: HashMap<String, String> = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("aws_region", "ap-southeast-1"),
            ("delta.checkpointInterval", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s3 = client(&url, &options).unwrap();
        let shown = format!("{s3:?}");
        assert!(shown.contains("http://127.0.0.1:9"), "{shown}");
        assert!(shown.contains("ap-southeast-1"), "{shown}");
        assert!(shown.contains("bucket: \"parstat\""), "{shown}");
    }
}
