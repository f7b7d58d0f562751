//! The embedded [`ArtifactStore`]: a directory, each object written atomically (temp file +
//! rename).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::db::new_id;
use super::ScratchDir;
use crate::backend::{ArtifactStore, BResult, BackendError};

// ---------------------------------------------------------------------------------------------
// Artifacts

/// Most artifact writes run at once (each on a blocking thread). Creating files and folders
/// under one parent serialises on that folder's lock in the kernel, so hundreds of concurrent
/// writers (one per job in flight) only spin on it and pile up blocking threads; a few at a time
/// keep the disk as busy with far less CPU and memory.
pub const ARTIFACT_WRITE_PARALLELISM: usize = 4;

/// The embedded artifacts store: one file per key under a root directory.
pub struct DirArtifactStore {
    root: PathBuf,
    /// Bounds concurrent writes to [`ARTIFACT_WRITE_PARALLELISM`].
    writers: Arc<tokio::sync::Semaphore>,
    pub(super) _guard: Option<Arc<ScratchDir>>,
}

impl DirArtifactStore {
    /// Uses (creating when absent) `root` as the store's directory.
    pub fn open(root: &Path) -> BResult<DirArtifactStore> {
        std::fs::create_dir_all(root).map_err(|e| BackendError::Other(format!("cannot create {}: {e}", root.display())))?;
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        Ok(DirArtifactStore { root, writers: Arc::new(tokio::sync::Semaphore::new(ARTIFACT_WRITE_PARALLELISM)), _guard: None })
    }

    /// The directory the objects live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a valid key maps to.
    fn path_for(&self, key: &str) -> BResult<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Checks an artifact key: a non-empty relative path of plain components (no `..`, `.`, empty
/// components, backslashes, NUL, or leading `/`), at most 1024 bytes.
pub fn validate_key(key: &str) -> BResult<()> {
    let bad = |why: &str| Err(BackendError::Other(format!("invalid artifact key {key:?}: {why}")));
    if key.is_empty() || key.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("must be relative");
    }
    if key.contains('\\') || key.contains('\0') {
        return bad("must not contain backslashes or NUL");
    }
    if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("components must be non-empty and not `.` or `..`");
    }
    Ok(())
}

#[async_trait]
impl ArtifactStore for DirArtifactStore {
    async fn put(&self, key: &str, body: Vec<u8>, _content_type: &str) -> BResult<()> {
        let path = self.path_for(key)?;
        let permit = self.writers.clone().acquire_owned().await.map_err(|_| BackendError::Other("the artifact store is closed".into()))?;
        tokio::task::spawn_blocking(move || -> BResult<()> {
            let _permit = permit;
            let io = |what: &str, e: std::io::Error| BackendError::Other(format!("cannot {what} {}: {e}", path.display()));
            let parent = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
            let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("object");
            let tmp = parent.join(format!(".{name}.{}.tmp", new_id()));
            if let Err(e) = std::fs::write(&tmp, &body) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("write", e));
            }
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("replace", e));
            }
            Ok(())
        })
        .await
        .map_err(|e| BackendError::Other(format!("artifact write task failed: {e}")))?
    }

    async fn get(&self, key: &str) -> BResult<Option<Vec<u8>>> {
        let path = self.path_for(key)?;
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::Other(format!("cannot read {}: {e}", path.display()))),
        })
        .await
        .map_err(|e| BackendError::Other(format!("artifact read task failed: {e}")))?
    }

    fn location(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }
}
