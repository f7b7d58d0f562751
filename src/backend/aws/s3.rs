//! [`S3Artifacts`]: the [`ArtifactStore`] contract on the stage's S3 bucket.
//!
//! A `PutObject` replaces the object atomically (readers see the old or the new one), which is
//! the contract's "no torn reads".

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use super::classify;
use crate::backend::{ArtifactStore, BResult, BackendError};

/// An S3 client for the stage. Path-style addressing (`endpoint/bucket/key`) is used whenever an
/// endpoint override is configured, because emulators (moto, LocalStack) cannot serve
/// virtual-hosted bucket names on `127.0.0.1`; real S3 keeps its default addressing.
pub fn client(sdk: &SdkConfig) -> Client {
    super::calls::s3(sdk)
}

/// Job results and large inputs in one bucket, keyed by the contract's relative paths.
#[derive(Debug, Clone)]
pub struct S3Artifacts {
    client: Client,
    bucket: String,
}

impl S3Artifacts {
    /// The store for `bucket` (which `provision` creates).
    pub fn new(client: Client, bucket: impl Into<String>) -> S3Artifacts {
        S3Artifacts { client, bucket: bucket.into() }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

/// The content type to store: the caller's, or `application/json` for `.json` keys when the
/// caller gave none, or `application/octet-stream`.
fn content_type_for(key: &str, given: &str) -> String {
    if !given.trim().is_empty() {
        given.to_string()
    } else if key.ends_with(".json") {
        "application/json".into()
    } else {
        "application/octet-stream".into()
    }
}

#[async_trait]
impl ArtifactStore for S3Artifacts {
    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> BResult<()> {
        if key.is_empty() {
            return Err(BackendError::Other("empty artifact key".into()));
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type_for(key, content_type))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> BResult<Option<Vec<u8>>> {
        let out = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => out,
            Err(e) => {
                if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_))) {
                    return Ok(None);
                }
                return match classify(&e) {
                    // A missing bucket is a misconfiguration, not a missing object.
                    BackendError::NotFound(m) if m.contains("NoSuchBucket") => Err(BackendError::NotFound(m)),
                    BackendError::NotFound(_) => Ok(None),
                    other => Err(other),
                };
            }
        };
        let bytes = out.body.collect().await.map_err(|e| BackendError::Transient(format!("reading s3://{}/{key}: {e}", self.bucket)))?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_default_to_json() {
        assert_eq!(content_type_for("jobs/a/result.json", ""), "application/json");
        assert_eq!(content_type_for("inputs/a", ""), "application/octet-stream");
        assert_eq!(content_type_for("inputs/a", "text/html"), "text/html");
    }
}
