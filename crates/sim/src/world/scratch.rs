//! Where a seed keeps its files: the town database, the session databases
//! and the snapshots. They live only as long as the seed, so a RAM-backed
//! directory serves best: nothing in a simulation needs its files to survive
//! a power cut, and on a disk SQLite's flushes cost about a tenth of a seed's
//! run time.

use std::path::{Path, PathBuf};

/// Overrides the scratch root (for a system without `/dev/shm`, or to keep
/// the files off RAM when a sweep's seeds are huge).
pub const SCRATCH_ENV: &str = "GASTOWN_SIM_SCRATCH";

/// The RAM-backed directory Linux provides.
const SHM: &str = "/dev/shm";

/// The root under which each seed makes its own directory:
/// `$GASTOWN_SIM_SCRATCH` if set, else `/dev/shm` if it is a directory, else
/// the system temp directory.
pub fn root() -> PathBuf {
    pick(std::env::var_os(SCRATCH_ENV).map(PathBuf::from), Path::new(SHM))
}

fn pick(configured: Option<PathBuf>, shm: &Path) -> PathBuf {
    match configured {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ if shm.is_dir() => shm.to_path_buf(),
        _ => std::env::temp_dir(),
    }
}

/// A fresh directory for one seed, removed when dropped.
pub fn seed_dir() -> Result<tempfile::TempDir, String> {
    make_in(&root())
}

fn make_in(root: &Path) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new().prefix("gastown-sim-").tempdir_in(root).map_err(|e| {
        format!("cannot make a scratch directory in {} ({SCRATCH_ENV} chooses another): {e}", root.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_root_wins() {
        let shm = tempfile::tempdir().unwrap();
        assert_eq!(pick(Some("/elsewhere".into()), shm.path()), PathBuf::from("/elsewhere"));
    }

    #[test]
    fn shm_when_present_else_temp() {
        let shm = tempfile::tempdir().unwrap();
        assert_eq!(pick(None, shm.path()), shm.path());
        assert_eq!(pick(Some(PathBuf::new()), shm.path()), shm.path(), "an empty setting is no setting");
        let missing = shm.path().join("absent");
        assert_eq!(pick(None, &missing), std::env::temp_dir());
    }

    #[test]
    fn an_unusable_root_is_named_in_the_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let got = make_in(file.path()).map(|_| ()).unwrap_err();
        assert!(got.contains(&file.path().display().to_string()) && got.contains(SCRATCH_ENV), "{got}");
        let ok = tempfile::tempdir().unwrap();
        assert!(make_in(ok.path()).unwrap().path().starts_with(ok.path()));
    }
}
