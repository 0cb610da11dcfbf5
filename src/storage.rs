//! Where files live: a directory given as a local path or an object store URL, and the layout the
//! files sink gives a directory, which the files source and `CREATE EXTERNAL TABLE` honour.
//!
//! # Background
//! The files sink must let readers see each batch whole or not at all, on stores where several
//! files cannot appear at once. So a batch's data files are written first, under fresh names, and
//! the batch commits by writing one small file, its *manifest entry*
//! `<dir>/_tidewater_metadata/<batch id>`, that lists them. A reader that finds a
//! `_tidewater_metadata/` directory lists files from the entries, never from the directory, so a
//! crash between the two steps leaves files that nobody reads (the sink deletes them when it next
//! starts). This is Spark's `_spark_metadata` log, without its compaction.
//!
//! Partitioned output goes into hive-style directories `column=value/`, values escaped as Hive
//! and Spark escape them (`%XX`, also for the characters object stores advise against, so that a
//! name reads back from a listing exactly as written), a null or empty value written as
//! `__HIVE_DEFAULT_PARTITION__`.
//!
//! Depends on `error` only.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::object_store::path::{Path, PathPart};
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The directory, inside a sink's output directory, that holds its manifest entries.
pub(crate) const METADATA_DIR: &str = "_tidewater_metadata";

/// How Hive and Spark name the directory of a null (or empty) partition value.
pub(crate) const HIVE_DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The version of the manifest entries this code writes and reads.
const MANIFEST_VERSION: u32 = 1;

/// A directory in an object store.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The directory inside `store`.
    pub(crate) path: Path,
    /// The directory as the user wrote it, for messages.
    pub(crate) display: String,
    /// For a local directory, its path on disk: to say clearly when it does not exist, and for
    /// checkpoint folders to write and delete files there directly.
    pub(crate) local: Option<PathBuf>,
}

impl Location {
    /// How to name a file of this store in a message: its path on disk, or its path in the store.
    pub(crate) fn display_file(&self, location: &Path) -> String {
        match &self.local {
            Some(_) => format!("/{location}"),
            None => location.to_string(),
        }
    }
}

/// Resolves a directory given as an object store URL (`file:///data/out`, `s3://bucket/out`) or
/// as a local path, relative to the working directory.
///
/// # Errors
/// A URL whose scheme has no object store in this build, or a path that cannot be made absolute.
pub(crate) fn resolve(location: &str) -> Result<Location> {
    resolve_in(location, None)
}

/// Like [`resolve`], but a URL is first looked up in `runtime`'s object store registry, so stores
/// the application registered (and the session's `memory://`) are used.
pub(crate) fn resolve_in(location: &str, runtime: Option<&RuntimeEnv>) -> Result<Location> {
    match url::Url::parse(location) {
        // A one-letter scheme is a Windows drive letter: a local path.
        Ok(url) if url.scheme().len() > 1 => {
            let registered = runtime.and_then(|r| {
                let base = ObjectStoreUrl::parse(&url[..url::Position::BeforePath]).ok()?;
                let store = r.object_store(base).ok()?;
                Some((store, Path::from_url_path(url.path()).ok()?))
            });
            let (store, path) = match registered {
                Some(found) => found,
                None => {
                    let (store, path) = datafusion::object_store::parse_url(&url).map_err(|e| Error::ObjectStore {
                        context: format!("opening '{location}'"),
                        error: e,
                    })?;
                    (Arc::from(store), path)
                }
            };
            let local = match url.scheme() {
                "file" => url.to_file_path().ok(),
                _ => None,
            };
            Ok(Location {
                store,
                path,
                display: location.to_string(),
                local,
            })
        }
        _ => {
            let absolute = std::path::absolute(location).map_err(|e| Error::Io {
                context: format!("resolving path '{location}'"),
                error: e,
            })?;
            // Object store paths have no `..`: resolve it (and symbolic links before it) here.
            let absolute = canonical_local(&absolute);
            let path = Path::from_absolute_path(&absolute).map_err(|e| Error::ObjectStore {
                context: format!("path '{location}'"),
                error: e.into(),
            })?;
            Ok(Location {
                // Deleting a partition's last file removes its directory too.
                store: Arc::new(datafusion::object_store::local::LocalFileSystem::new().with_automatic_cleanup(true)),
                path,
                display: location.to_string(),
                local: Some(absolute),
            })
        }
    }
}

/// A directory as a place, so that two spellings of one directory compare equal: a local path
/// made absolute, its existing part canonicalized (symbolic links and `..` resolved) and the rest
/// normalized (`file://` URLs are local paths); or an object store URL's store (scheme and
/// authority) and its path segments, `.` and `..` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    Local(PathBuf),
    Store {
        /// `scheme://authority`, lower-cased.
        store: String,
        /// The path's segments, percent-decoded.
        segments: Vec<String>,
    },
}

impl Place {
    /// The place `location` (a local path or a URL, as [`resolve`] takes them) names.
    ///
    /// # Errors
    /// A local path that cannot be made absolute.
    pub(crate) fn of(location: &str) -> Result<Place> {
        match url::Url::parse(location) {
            Ok(url) if url.scheme().len() > 1 => match url.scheme() {
                "file" => match url.to_file_path() {
                    Ok(path) => Ok(Place::Local(canonical_local(&path))),
                    Err(()) => Ok(Place::store_of(&url)),
                },
                _ => Ok(Place::store_of(&url)),
            },
            _ => {
                let absolute = std::path::absolute(location).map_err(|e| Error::Io {
                    context: format!("resolving path '{location}'"),
                    error: e,
                })?;
                Ok(Place::Local(canonical_local(&absolute)))
            }
        }
    }

    fn store_of(url: &url::Url) -> Place {
        let mut segments: Vec<String> = Vec::new();
        for segment in url.path().split('/') {
            match percent_decode(segment).as_str() {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                other => segments.push(other.to_string()),
            }
        }
        Place::Store {
            store: url[..url::Position::BeforePath].to_lowercase(),
            segments,
        }
    }

    /// Whether one place is the other or inside it.
    pub(crate) fn overlaps(&self, other: &Place) -> bool {
        match (self, other) {
            (Place::Local(a), Place::Local(b)) => a.starts_with(b) || b.starts_with(a),
            (Place::Store { store: a, segments: sa }, Place::Store { store: b, segments: sb }) => {
                a == b && (sa.starts_with(sb) || sb.starts_with(sa))
            }
            _ => false,
        }
    }
}

/// `path` (absolute) with its longest existing ancestor canonicalized and the components after it
/// normalized lexically: those do not exist, so none of them is a symbolic link.
fn canonical_local(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let components: Vec<Component<'_>> = path.components().collect();
    for split in (1..=components.len()).rev() {
        let head: PathBuf = components[..split].iter().collect();
        let Ok(mut resolved) = head.canonicalize() else {
            continue;
        };
        for component in &components[split..] {
            match component {
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::Normal(name) => resolved.push(name),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        return resolved;
    }
    path.to_path_buf()
}

/// How a committed batch changes what readers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EntryMode {
    /// The batch's files add to the files before.
    Append,
    /// The batch's files replace all files before.
    Complete,
}

/// One data file of a committed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommittedFile {
    /// Relative to the output directory, `/`-separated, as object store path segments.
    pub(crate) path: String,
    /// Rows in the file.
    pub(crate) rows: u64,
}

/// The manifest entry of one committed batch: `<dir>/_tidewater_metadata/<batch id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestEntry {
    pub(crate) version: u32,
    pub(crate) batch_id: u64,
    pub(crate) mode: EntryMode,
    pub(crate) files: Vec<CommittedFile>,
}

impl ManifestEntry {
    pub(crate) fn new(batch_id: u64, mode: EntryMode, files: Vec<CommittedFile>) -> Self {
        ManifestEntry {
            version: MANIFEST_VERSION,
            batch_id,
            mode,
            files,
        }
    }
}

/// `<dir>/_tidewater_metadata`.
pub(crate) fn metadata_dir(dir: &Path) -> Path {
    dir.clone().join(METADATA_DIR)
}

/// `<dir>/_tidewater_metadata/<batch_id>`.
pub(crate) fn entry_path(dir: &Path, batch_id: u64) -> Path {
    metadata_dir(dir).join(batch_id.to_string())
}

/// The file at `relative` (a [`CommittedFile::path`]) inside `dir`.
pub(crate) fn file_path(dir: &Path, relative: &str) -> Result<Path> {
    let relative = Path::parse(relative).map_err(|e| Error::ObjectStore {
        context: format!("file '{relative}' of a manifest entry"),
        error: e.into(),
    })?;
    Ok(Path::from_iter(dir.parts().chain(relative.parts())))
}

/// The manifest entries of the sink output in `dir` after batch `after` (all when `None`), in
/// batch order; `None` when `dir` is not a files sink's output (it has no `_tidewater_metadata/`).
///
/// # Errors
/// The store fails, or an entry is not a manifest entry (the error names it).
pub(crate) async fn read_manifest(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    display: &str,
    after: Option<u64>,
) -> Result<Option<Vec<ManifestEntry>>> {
    let metadata = metadata_dir(dir);
    let listing = store
        .list_with_delimiter(Some(&metadata))
        .await
        .map_err(|e| Error::ObjectStore {
            context: format!("listing '{display}/{METADATA_DIR}'"),
            error: e,
        })?;
    if listing.objects.is_empty() && listing.common_prefixes.is_empty() {
        return Ok(None);
    }
    let mut ids: Vec<u64> = listing
        .objects
        .iter()
        .filter_map(|o| o.location.filename()?.parse::<u64>().ok())
        .filter(|id| after.is_none_or(|after| *id > after))
        .collect();
    ids.sort_unstable();
    let entries = futures::stream::iter(ids)
        .map(|id| read_entry(store, dir, display, id))
        .buffered(8)
        .try_collect()
        .await?;
    Ok(Some(entries))
}

async fn read_entry(store: &Arc<dyn ObjectStore>, dir: &Path, display: &str, batch_id: u64) -> Result<ManifestEntry> {
    let name = format!("{display}/{METADATA_DIR}/{batch_id}");
    let bytes = match store.get(&entry_path(dir, batch_id)).await {
        Ok(result) => result.bytes().await,
        Err(e) => Err(e),
    }
    .map_err(|e| Error::ObjectStore {
        context: format!("reading '{name}'"),
        error: e,
    })?;
    let corrupt = |message: String| Error::Input {
        file: name.clone(),
        line: None,
        message,
    };
    let entry: ManifestEntry =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a Tidewater manifest entry: {e}")))?;
    if entry.version != MANIFEST_VERSION {
        return Err(corrupt(format!(
            "manifest version {} is not supported (this Tidewater reads version {MANIFEST_VERSION})",
            entry.version
        )));
    }
    if entry.batch_id != batch_id {
        return Err(corrupt(format!("the entry says it is batch {}", entry.batch_id)));
    }
    Ok(entry)
}

/// The entries whose files readers see: from the last `complete` entry on.
pub(crate) fn visible(entries: &[ManifestEntry]) -> &[ManifestEntry] {
    let start = entries.iter().rposition(|e| e.mode == EntryMode::Complete).unwrap_or(0);
    &entries[start..]
}

/// Characters escaped in partition directory names besides control characters: those Hive and
/// Spark escape, then those the object store would percent-encode itself.
const ESCAPED: &[char] = &[
    '"', '#', '%', '\'', '*', '/', ':', '=', '?', '\\', '\x7f', '{', '[', ']', '^', // Hive
    '`', '<', '>', '|', '}', '~', // object_store
];

fn hive_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_control() || ESCAPED.contains(&c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Undoes `%XX` escapes; anything that is not a valid escape is kept as it is.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The directory name `column=value` of one partition value (`None` for null), as an object
/// store path segment.
pub(crate) fn partition_segment(column: &str, value: Option<&str>) -> Result<String> {
    let value = match value {
        Some(v) if !v.is_empty() => hive_escape(v),
        _ => HIVE_DEFAULT_PARTITION.to_string(),
    };
    let segment = format!("{}={value}", hive_escape(column));
    // Escaped, the segment has no control character and no `/`: the store takes it as it is.
    match PathPart::parse(&segment) {
        Ok(_) => Ok(segment),
        Err(e) => Err(Error::Internal(format!("partition directory '{segment}': {e}"))),
    }
}

/// The partition values in the directories of `relative` (a file path inside the output
/// directory): each `column=value` segment, unescaped, `None` for the default partition.
///
/// # Examples
/// `day=2024-01-01/hour=10%3A00/part-00000-<uuid>.parquet` holds `day = '2024-01-01'` and
/// `hour = '10:00'`.
pub(crate) fn partition_values<'a>(relative: impl Iterator<Item = PathPart<'a>>) -> Vec<(String, Option<String>)> {
    let mut segments: Vec<PathPart<'a>> = relative.collect();
    segments.pop(); // the file name
    segments
        .iter()
        .filter_map(|segment| {
            let (column, value) = segment.as_ref().split_once('=')?;
            let value = (value != HIVE_DEFAULT_PARTITION).then(|| percent_decode(value));
            Some((percent_decode(column), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values_of(relative: &str) -> Vec<(String, Option<String>)> {
        partition_values(Path::parse(relative).unwrap().parts())
    }

    #[test]
    fn partition_segments_round_trip_escaped_values_and_nulls() {
        for value in ["2024-01-01", "a/b=c:d%e", "ünï cödé", "x?*[]{}~|<>`"] {
            let segment = partition_segment("day", Some(value)).unwrap();
            assert_eq!(
                values_of(&format!("{segment}/part-00000-x.parquet")),
                vec![("day".to_string(), Some(value.to_string()))]
            );
        }
        assert_eq!(partition_segment("day", Some("a/b:c")).unwrap(), "day=a%2Fb%3Ac");
        let null = partition_segment("day", None).unwrap();
        let empty = partition_segment("n", Some("")).unwrap();
        assert_eq!(null, "day=__HIVE_DEFAULT_PARTITION__");
        assert_eq!(
            values_of(&format!("{null}/{empty}/f")),
            vec![("day".to_string(), None), ("n".to_string(), None)]
        );
    }

    #[test]
    fn visible_entries_start_at_the_last_complete_one() {
        let entry = |id, mode| ManifestEntry::new(id, mode, vec![]);
        let entries = vec![
            entry(0, EntryMode::Append),
            entry(1, EntryMode::Complete),
            entry(2, EntryMode::Append),
        ];
        assert_eq!(visible(&entries).len(), 2);
        assert_eq!(visible(&entries[..1]).len(), 1);
        assert!(visible(&[]).is_empty());
    }
}
