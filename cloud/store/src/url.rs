//! Where a store lives, as `--store` names it: a directory of segments (a plain path or
//! `file:///abs/path`) or a bucket of an S3-protocol object store (`s3://bucket/prefix`).
//!
//! Parsing only checks the name; nothing is opened or contacted until a reader or writer is.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use url::Url;

/// A store's location. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A directory of segment files on this machine ([`crate::StoreWriter`]).
    Dir(PathBuf),
    /// A bucket and key prefix in an S3-protocol object store ([`crate::bucket`]); the endpoint,
    /// region and credentials come from the `AWS_*` environment variables.
    Bucket(Url),
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((scheme, _)) = s.split_once("://") else {
            if s.is_empty() {
                return Err("the store location is empty".into());
            }
            return Ok(Self::Dir(PathBuf::from(s)));
        };
        let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match scheme {
            "file" => url.to_file_path().map(Self::Dir).map_err(|()| format!("{s:?}: a file:// store needs an absolute path (file:///srv/features)")),
            "s3" | "s3a" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!("{s:?}: an s3:// store names its bucket: s3://BUCKET/PREFIX"));
                }
                Ok(Self::Bucket(url))
            }
            other => Err(format!("{s:?}: unknown store scheme {other:?} (a directory, file:///DIR or s3://BUCKET/PREFIX)")),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::Bucket(url) => write!(f, "{url}"),
        }
    }
}

impl From<&Path> for StoreUrl {
    fn from(dir: &Path) -> Self {
        Self::Dir(dir.to_path_buf())
    }
}

impl From<PathBuf> for StoreUrl {
    fn from(dir: PathBuf) -> Self {
        Self::Dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_file_urls_and_buckets() {
        assert_eq!("runs/store".parse::<StoreUrl>(), Ok(StoreUrl::Dir("runs/store".into())));
        assert_eq!("file:///srv/features".parse::<StoreUrl>(), Ok(StoreUrl::Dir("/srv/features".into())));
        let bucket: StoreUrl = "s3://features/job-1".parse().unwrap();
        assert!(matches!(&bucket, StoreUrl::Bucket(u) if u.host_str() == Some("features") && u.path() == "/job-1"));
        assert_eq!(bucket.to_string(), "s3://features/job-1");
        assert!(!matches!(bucket, StoreUrl::Dir(_)));
    }

    #[test]
    fn bad_locations_are_named() {
        for (bad, says) in [("", "empty"), ("s3:///prefix", "names its bucket"), ("gs://b/p", "unknown store scheme"), ("file://relative/x", "absolute path")] {
            let err = bad.parse::<StoreUrl>().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
