//! Uploaded images on disk, under `<data dir>/storage`. File names are always chosen here
//! (`<funko id>-<random>.<ext>`); nothing a client sends reaches a path.
//!
//! A file lives as long as some Funko (deleted ones included) names it as its image: several
//! may share one (a client may copy another's `image`), so a file is removed only after a
//! check under the write lock that nothing references it ([`ImageStore::release`]). An upload
//! that fails or is abandoned removes its own file; a start-up sweep removes what a crash left.

use std::{
    hash::{BuildHasher, RandomState},
    path::{Path, PathBuf},
};

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::{db::Db, domain::funko::STORAGE_PREFIX, error::ApiError};

/// How old a file must be before the start-up sweep may take it for abandoned (another
/// instance sharing the directory may be between saving an upload and committing it).
const SWEEP_AFTER: Duration = Duration::from_secs(3600);
/// Uploads in progress are written under this prefix, then renamed.
const TEMP_PREFIX: &str = ".upload-";

/// Largest accepted image.
pub(crate) const MAX_IMAGE_BYTES: usize = 2 * 1024 * 1024;

/// Served for Funkos without an image of their own.
pub(crate) const PLACEHOLDER: &[u8] = include_bytes!("../static/placeholder.png");
pub(crate) const PLACEHOLDER_NAME: &str = "placeholder.png";

/// An image format we accept, known by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImageKind {
    Png,
    Jpeg,
    Gif,
    Webp,
}

impl ImageKind {
    /// Recognises an image by its signature, never by its name or declared type.
    pub(crate) fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
            Some(Self::Gif)
        } else if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }

    pub(crate) fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }

    fn from_extension(ext: &str) -> Option<Self> {
        [Self::Png, Self::Jpeg, Self::Gif, Self::Webp]
            .into_iter()
            .find(|k| k.extension() == ext)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("storage"),
        }
    }

    /// Streams an upload to disk, refusing it (413) as soon as it passes the limit and (415)
    /// unless its first bytes are an image we accept. Returns the public path
    /// (`/storage/<name>`).
    pub(crate) async fn save(
        &self,
        funko_id: i64,
        mut reader: impl AsyncRead + Unpin,
    ) -> Result<String, ApiError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let random = RandomState::new().hash_one(funko_id);
        // Removed however this ends early: an error, or the upload dropped mid-stream.
        let temp = TempFile(
            self.dir
                .join(format!("{TEMP_PREFIX}{funko_id}-{random:016x}")),
        );
        let kind = self.stream_to(&temp.0, &mut reader).await?;
        let name = format!("{funko_id}-{random:016x}.{}", kind.extension());
        tokio::fs::rename(&temp.0, self.dir.join(&name))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        std::mem::forget(temp);
        Ok(format!("{STORAGE_PREFIX}{name}"))
    }

    async fn stream_to(
        &self,
        path: &Path,
        reader: &mut (impl AsyncRead + Unpin),
    ) -> Result<ImageKind, ApiError> {
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut head = Vec::with_capacity(16);
        let mut total = 0usize;
        loop {
            let n = reader
                .read(&mut buffer)
                .await
                .map_err(|e| ApiError::bad_request(format!("reading the upload failed: {e}")))?;
            if n == 0 {
                break;
            }
            total += n;
            if total > MAX_IMAGE_BYTES {
                return Err(ApiError::PayloadTooLarge {
                    limit: MAX_IMAGE_BYTES,
                });
            }
            if head.len() < 16 {
                let take = (16 - head.len()).min(n);
                head.extend_from_slice(&buffer[..take]);
            }
            file.write_all(&buffer[..n])
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
        }
        file.flush()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        ImageKind::sniff(&head).ok_or_else(|| {
            ApiError::UnsupportedMediaType(
                "the file is not a PNG, JPEG, GIF or WebP image".to_owned(),
            )
        })
    }

    /// Removes the file at a public path once no Funko names it, checked under the write lock
    /// so no write can start naming it meanwhile. Paths that are not this store's files (the
    /// placeholder, other sites) are left alone; a failure is logged (the sweep retries).
    pub(crate) async fn release(&self, db: &Db, public_path: &str) {
        let Some(name) = own_file(public_path) else {
            return;
        };
        let result = async {
            let mut tx = db.begin_write().await?;
            if crate::db::funkos::count_image_users(&mut tx, public_path).await? == 0 {
                match tokio::fs::remove_file(self.dir.join(name)).await {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        tracing::warn!(error = %err, file = name, "removing an image failed")
                    }
                }
            }
            tx.commit().await
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, file = name, "releasing an image failed");
        }
    }

    /// Removes what a crash or a lost follow-up left behind: uploads never finished, and files
    /// no Funko names, once they are older than an hour.
    pub(crate) async fn sweep(&self, db: &Db) -> anyhow::Result<()> {
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return Ok(());
        };
        let mut conn = db.reader.acquire().await?;
        let used = crate::db::funkos::stored_images(&mut conn).await?;
        drop(conn);
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let old = entry
                .metadata()
                .await?
                .modified()
                .ok()
                .and_then(|at| SystemTime::now().duration_since(at).ok())
                .is_some_and(|age| age >= SWEEP_AFTER);
            let abandoned = name.starts_with(TEMP_PREFIX)
                || (safe_name(&name) && !used.contains(&format!("{STORAGE_PREFIX}{name}")));
            if old && abandoned {
                tracing::info!(file = name, "removing an image nothing uses");
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        Ok(())
    }

    /// A stored file's bytes and content type, if `name` is one of ours.
    pub(crate) async fn read(&self, name: &str) -> Option<(Vec<u8>, &'static str)> {
        if name == PLACEHOLDER_NAME {
            return Some((PLACEHOLDER.to_vec(), ImageKind::Png.content_type()));
        }
        if !safe_name(name) {
            return None;
        }
        let kind = ImageKind::from_extension(name.rsplit_once('.')?.1)?;
        let bytes = tokio::fs::read(self.dir.join(name)).await.ok()?;
        Some((bytes, kind.content_type()))
    }
}

/// An upload's temporary file, removed when dropped (forgotten once renamed into place).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The file name of a public path to one of this store's own files (not the placeholder).
fn own_file(public_path: &str) -> Option<&str> {
    public_path
        .strip_prefix(STORAGE_PREFIX)
        .filter(|name| *name != PLACEHOLDER_NAME && safe_name(name))
}

/// A bare file name of the shape this store writes: no separators, no leading dot.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_content() {
        assert_eq!(ImageKind::sniff(PLACEHOLDER), Some(ImageKind::Png));
        assert_eq!(
            ImageKind::sniff(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ImageKind::Jpeg)
        );
        assert_eq!(ImageKind::sniff(b"GIF89a...."), Some(ImageKind::Gif));
        assert_eq!(
            ImageKind::sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageKind::Webp)
        );
        assert_eq!(ImageKind::sniff(b"<svg xmlns="), None);
        assert_eq!(ImageKind::sniff(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(ImageKind::sniff(b""), None);
    }

    #[test]
    fn names() {
        assert!(safe_name("7-00ff.png"));
        for bad in ["", "../x.png", "a/b.png", ".hidden", "x\\y.png", "%2e%2e"] {
            assert!(!safe_name(bad), "{bad}");
        }
    }
}
