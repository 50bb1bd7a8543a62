//! Uploaded images on disk, under `<data dir>/storage`. File names are always chosen here
//! (`<funko id>-<random>.<ext>`); nothing a client sends reaches a path.

use std::{
    hash::{BuildHasher, RandomState},
    path::{Path, PathBuf},
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::{domain::funko::STORAGE_PREFIX, error::ApiError};

/// Largest accepted image.
pub const MAX_IMAGE_BYTES: usize = 2 * 1024 * 1024;

/// Served for Funkos without an image of their own.
pub const PLACEHOLDER: &[u8] = include_bytes!("../static/placeholder.png");
pub const PLACEHOLDER_NAME: &str = "placeholder.png";

/// An image format we accept, known by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    Png,
    Jpeg,
    Gif,
    Webp,
}

impl ImageKind {
    /// Recognises an image by its signature, never by its name or declared type.
    pub fn sniff(head: &[u8]) -> Option<Self> {
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

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
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
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("storage"),
        }
    }

    /// Streams an upload to disk, refusing it (413) as soon as it passes the limit and (415)
    /// unless its first bytes are an image we accept. Returns the public path
    /// (`/storage/<name>`).
    pub async fn save(
        &self,
        funko_id: i64,
        mut reader: impl AsyncRead + Unpin,
    ) -> Result<String, ApiError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let random = RandomState::new().hash_one(funko_id);
        let temp = self.dir.join(format!(".upload-{funko_id}-{random:016x}"));
        let result = self.stream_to(&temp, &mut reader).await;
        match result {
            Ok(kind) => {
                let name = format!("{funko_id}-{random:016x}.{}", kind.extension());
                tokio::fs::rename(&temp, self.dir.join(&name))
                    .await
                    .map_err(|e| ApiError::Internal(e.into()))?;
                Ok(format!("{STORAGE_PREFIX}{name}"))
            }
            Err(err) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(err)
            }
        }
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

    /// Removes a file this store wrote, given its public path; anything else is left alone.
    pub async fn remove(&self, public_path: &str) {
        if let Some(name) = public_path.strip_prefix(STORAGE_PREFIX)
            && name != PLACEHOLDER_NAME
            && safe_name(name)
            && let Err(err) = tokio::fs::remove_file(self.dir.join(name)).await
        {
            tracing::warn!(error = %err, file = name, "removing a replaced image failed");
        }
    }

    /// A stored file's bytes and content type, if `name` is one of ours.
    pub async fn read(&self, name: &str) -> Option<(Vec<u8>, &'static str)> {
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
