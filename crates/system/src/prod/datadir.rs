//! The data directory of `gastown up`: everything that survives a restart.
//!
//! | file | what |
//! |---|---|
//! | `town.db` | the town (SQLite, WAL) |
//! | `forge.db` | the local forge |
//! | `container/` | the container's disk: agent homes, session databases, worktrees |
//! | `secret` | the HMAC secret tokens are signed with (hex, mode 0600) |
//! | `town-id` | the town's id |
//! | `user-token` | a user token for the commands (rewritten at every start) |
//! | `boots` | how many times `gastown up` started here |
//! | `clock` | the last town time handed out (so time never runs backwards) |
//! | `url` | the town API's URL while `gastown up` runs |

use super::ProdError;
use crate::time::Timestamp;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fresh random bytes from the OS (production only; the simulator never gets here).
pub fn random_bytes(n: usize) -> Result<Vec<u8>, ProdError> {
    use std::io::Read;
    let mut f = std::fs::File::open("/dev/urandom").map_err(|e| ProdError::io("cannot open", "/dev/urandom", e))?;
    let mut buf = vec![0u8; n];
    f.read_exact(&mut buf).map_err(|e| ProdError::io("cannot read", "/dev/urandom", e))?;
    Ok(buf)
}

impl DataDir {
    /// Open (creating) the directory.
    pub fn create(root: impl Into<PathBuf>) -> Result<DataDir, ProdError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| ProdError::io("cannot create the data directory", &root, e))?;
        Ok(DataDir { root })
    }

    /// An existing directory, for the commands (never created).
    pub fn existing(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn read(&self, name: &str) -> Result<Option<String>, ProdError> {
        let p = self.path(name);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ProdError::io("cannot read", p, e)),
        }
    }

    /// Write through a temporary file and a rename, so a crash never leaves half a file.
    pub fn write(&self, name: &str, content: &str, private: bool) -> Result<(), ProdError> {
        let p = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let w = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = opts.open(&tmp)?;
            f.write_all(content.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)
        };
        w().map_err(|e| ProdError::io("cannot write", &p, e))
    }

    /// The HMAC secret, created on first use.
    pub fn secret(&self) -> Result<Vec<u8>, ProdError> {
        if let Some(s) = self.read("secret")? {
            if s.len() >= 32 {
                return Ok(s.into_bytes());
            }
            return Err(ProdError::Other(format!(
                "{}: the secret is too short (expected at least 32 hex characters)",
                self.path("secret").display()
            )));
        }
        let s = hex(&random_bytes(32)?);
        self.write("secret", &s, true)?;
        Ok(s.into_bytes())
    }

    /// The town id: the one on disk, else a new random one.
    pub fn town_id(&self) -> Result<String, ProdError> {
        if let Some(id) = self.read("town-id")?.filter(|s| !s.is_empty()) {
            return Ok(id);
        }
        let id = format!("town-{}", hex(&random_bytes(4)?));
        self.write("town-id", &id, false)?;
        Ok(id)
    }

    /// A random seed for a new town's id generator.
    pub fn new_seed() -> Result<u64, ProdError> {
        let b = random_bytes(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// Count this start; answers the new count.
    pub fn next_boot(&self) -> Result<u64, ProdError> {
        let n = self.read("boots")?.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) + 1;
        self.write("boots", &n.to_string(), false)?;
        Ok(n)
    }

    pub fn last_clock(&self) -> Result<Option<Timestamp>, ProdError> {
        Ok(self.read("clock")?.and_then(|s| s.parse::<i64>().ok()).map(Timestamp))
    }
    pub fn save_clock(&self, now: Timestamp) -> Result<(), ProdError> {
        self.write("clock", &now.0.to_string(), false)
    }

    pub fn user_token(&self) -> Result<Option<String>, ProdError> {
        self.read("user-token")
    }
    pub fn save_user_token(&self, token: &str) -> Result<(), ProdError> {
        self.write("user-token", token, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::create(dir.path().join("data")).unwrap();
        let (secret, id) = (d.secret().unwrap(), d.town_id().unwrap());
        assert!(id.starts_with("town-") && secret.len() == 64);
        let d2 = DataDir::create(dir.path().join("data")).unwrap();
        assert_eq!(d2.secret().unwrap(), secret);
        assert_eq!(d2.town_id().unwrap(), id);
        assert_eq!((d2.next_boot().unwrap(), d2.next_boot().unwrap()), (1, 2));
        assert_eq!(d2.last_clock().unwrap(), None);
        d2.save_clock(Timestamp(42)).unwrap();
        assert_eq!(d.last_clock().unwrap(), Some(Timestamp(42)));
    }

    #[test]
    fn a_data_dir_under_a_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let e = DataDir::create(dir.path().join("f/sub")).unwrap_err().to_string();
        assert!(e.contains("cannot create the data directory") && e.contains("f/sub"), "{e}");
    }
}
