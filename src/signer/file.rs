//! The signer's local state file: a copy of the set's internal Secret (`state.json`) with the
//! set's token lifetime, so the signer serves while the API server it signs for is down.
//!
//! Written atomically (a temporary file in the same directory, fsync, rename, fsync of the
//! directory), mode 0600, and never moved backwards: [`check_progress`] refuses a state older
//! than the one served (a restored backup, a stale cache).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::SignerError;
use crate::core::state::{KeyState, Sensitive, SetState};

/// Layout version of the state file.
pub const FILE_VERSION: u32 = 1;

/// The state file's document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    /// Layout version.
    pub version: u32,
    /// NAMESPACE/NAME of the set it copies.
    pub set: String,
    /// The set's `spec.maxTokenLifetime`, seconds.
    pub max_token_lifetime_seconds: i64,
    /// resourceVersion of the internal Secret it was copied from (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// The set's `spec.revokedKeyIds` when it was written: those keys are neither served nor
    /// signed with, after a restart too, whatever the state still records (I10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_key_ids: Vec<String>,
    /// The internal Secret's `state.json`, verbatim (private keys included).
    pub state: Sensitive,
}

impl StateFile {
    /// The parsed, checked state.
    pub fn parse(&self) -> Result<SetState, SignerError> {
        Ok(SetState::from_bytes(self.state.expose().as_bytes())?)
    }
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> SignerError {
    SignerError::File {
        path: path.into(),
        why: why.to_string(),
    }
}

/// Reads the state file; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<StateFile>, SignerError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_err(path, e)),
    };
    let doc: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
        file_err(
            path,
            format_args!(
                "not a keyturn signer state file (line {} column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if doc.version != FILE_VERSION {
        return Err(file_err(
            path,
            format_args!(
                "layout version {} is not supported by this keyturn",
                doc.version
            ),
        ));
    }
    Ok(Some(doc))
}

/// Replaces the state file atomically; readable by its owner only.
pub fn write(path: &Path, doc: &StateFile) -> Result<(), SignerError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| file_err(path, "has no file name"))?;
    let tmp: PathBuf = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let bytes = Zeroizing::new(serde_json::to_vec(doc).expect("state file serializes"));
    // A temporary file left by a crash is removed (a symlink is removed, never followed);
    // the new one must be created here and now (O_EXCL), and never through a symlink
    // (O_NOFOLLOW): whoever planted one cannot make the signer write keys elsewhere.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(file_err(
                &tmp,
                format_args!("removing a stale temporary file: {e}"),
            ));
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(&bytes).map_err(|e| file_err(&tmp, e))?;
    f.sync_all().map_err(|e| file_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, format_args!("rename: {e}")))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| file_err(dir, format_args!("fsync of the directory: {e}")))?;
    Ok(())
}

/// The newest lifecycle time in a state: the latest creation, publication, activation or
/// retirement of any key. Removing a key after its overlap leaves it unchanged.
pub fn newest_time(state: &SetState) -> Option<DateTime<Utc>> {
    state
        .keys
        .iter()
        .flat_map(|r| {
            [
                Some(r.created_at),
                r.published_at,
                r.activated_at,
                r.retired_at,
            ]
        })
        .flatten()
        .max()
}

fn rank(s: KeyState) -> u8 {
    match s {
        KeyState::Pending => 0,
        KeyState::Active => 1,
        KeyState::Retired => 2,
        KeyState::Verification => 3,
    }
}

/// Whether `new` may replace `old`: a state only moves forward. Refused (with the reason): a
/// newest lifecycle time before the served one's, an Active key activated before the served
/// Active key, and a key whose state went back (Retired to Active, Active to Pending).
pub fn check_progress(old: &SetState, new: &SetState) -> Result<(), String> {
    if let (Some(o), Some(n)) = (newest_time(old), newest_time(new))
        && n < o
    {
        return Err(format!(
            "its newest change ({}) is before the served state's ({})",
            n.to_rfc3339(),
            o.to_rfc3339()
        ));
    }
    let active = |s: &SetState| {
        s.keys
            .iter()
            .find(|r| r.state() == KeyState::Active)
            .and_then(|r| r.activated_at.map(|t| (r.kid.clone(), t)))
    };
    if let (Some((ok, ot)), Some((nk, nt))) = (active(old), active(new))
        && nt < ot
    {
        return Err(format!(
            "its Active key {nk} was activated before the served Active key {ok}"
        ));
    }
    for n in &new.keys {
        if let Some(o) = old.keys.iter().find(|o| o.kid == n.kid)
            && rank(n.state()) < rank(o.state())
        {
            return Err(format!(
                "key {} would go back from {} to {}",
                n.kid,
                o.state().as_str(),
                n.state().as_str()
            ));
        }
    }
    Ok(())
}
