//! The root's state dir: the cluster CA, the root's certificate, the join and admin tokens, and the
//! counters kept across restarts.
//!
//! First start creates everything (secrets readable by the owner only) and says so; later starts
//! load it. The join token is `<state>/join-token`, the admin token `<state>/admin-token`.

use crate::core::Kept;
use banyan_agent::enrol::write_private;
use banyan_protocol::identity::{ClusterCa, Identity, JoinToken};
use banyan_protocol::metric::MetricSet;
use banyan_protocol::wire::ROOT_NAME;

/// Where the totals and the children's report numbers are kept across restarts.
const KEPT_FILE: &str = "kept.bin";
use std::path::{Path, PathBuf};

pub struct RootState {
    pub dir: PathBuf,
    pub ca: ClusterCa,
    pub identity: Identity,
    pub join_token: JoinToken,
    pub admin_token: String,
    /// True when this start created the state.
    pub created: bool,
}

fn read(dir: &Path, file: &str) -> Result<String, String> {
    let p = dir.join(file);
    std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

impl RootState {
    /// Loads the state in `dir`, creating it on first start.
    pub fn open(dir: &Path) -> Result<RootState, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the state dir {}: {e}", dir.display()))?;
        if !dir.join("ca.key").exists() {
            return Self::create(dir);
        }
        let ca = ClusterCa::from_pem(&read(dir, "ca.crt")?, &read(dir, "ca.key")?)
            .map_err(|e| format!("the CA in {} is unusable: {e}", dir.display()))?;
        let identity = Identity::from_pem_files(
            &read(dir, "root.crt")?,
            &read(dir, "root.key")?,
            &read(dir, "ca.crt")?,
        )
        .map_err(|e| format!("the root certificate in {} is unusable: {e}", dir.display()))?;
        let join_token: JoinToken = read(dir, "join-token")?
            .trim()
            .parse()
            .map_err(|e| format!("{}/join-token: {e}", dir.display()))?;
        if join_token.ca_fingerprint != ca.fingerprint() {
            return Err(format!(
                "{}/join-token does not belong to the CA in that directory",
                dir.display()
            ));
        }
        let admin_token = read(dir, "admin-token")?.trim().to_string();
        if admin_token.len() < 16 {
            return Err(format!("{}/admin-token is too short", dir.display()));
        }
        Ok(RootState {
            dir: dir.to_path_buf(),
            ca,
            identity,
            join_token,
            admin_token,
            created: false,
        })
    }

    fn create(dir: &Path) -> Result<RootState, String> {
        let ca = ClusterCa::generate().map_err(|e| e.to_string())?;
        let identity = ca.issue(ROOT_NAME).map_err(|e| e.to_string())?;
        let join_token = JoinToken::generate(ca.fingerprint());
        let admin_token = banyan_protocol::identity::random_secret_hex(32);
        let w = |file: &str, text: &str| {
            write_private(&dir.join(file), text).map_err(|e| e.to_string())
        };
        let (cert, key, ca_pem) = identity.to_pem_files();
        w("ca.key", &ca.key_pem())?;
        w("ca.crt", &ca_pem)?;
        w("root.crt", &cert)?;
        w("root.key", &key)?;
        w("join-token", &format!("{join_token}\n"))?;
        w("admin-token", &format!("{admin_token}\n"))?;
        Ok(RootState {
            dir: dir.to_path_buf(),
            ca,
            identity,
            join_token,
            admin_token,
            created: true,
        })
    }

    /// What was kept from before a restart: the totals and which report of each child they fold
    /// in (empty on first start). `totals.bin` from before the reports were numbered is read as
    /// totals without numbers: the children then owe their last reports, as they did then.
    pub fn load_kept(&self) -> Kept {
        let p = self.dir.join(KEPT_FILE);
        match std::fs::read(&p) {
            Ok(bytes) => match postcard::from_bytes::<Kept>(&bytes) {
                Ok(k) => return k,
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "kept totals unreadable; starting from zero");
                    return Kept::default();
                }
            },
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %p.display(), error = %e, "kept totals unreadable; starting from zero");
                return Kept::default();
            }
            Err(_) => {}
        }
        let old = self.dir.join("totals.bin");
        match std::fs::read(&old).map(|b| postcard::from_bytes::<MetricSet>(&b)) {
            Ok(Ok(totals)) => Kept {
                totals,
                holds: Vec::new(),
            },
            Ok(Err(e)) => {
                tracing::warn!(file = %old.display(), error = %e, "kept totals unreadable; starting from zero");
                Kept::default()
            }
            Err(_) => Kept::default(),
        }
    }

    /// Keeps the totals and the children's report numbers (atomically: a crash leaves the old or
    /// the new file).
    pub fn save_kept(&self, kept: &Kept) -> Result<(), String> {
        let bytes = postcard::to_stdvec(kept).map_err(|e| e.to_string())?;
        let p = self.dir.join(KEPT_FILE);
        let tmp = self.dir.join(format!("{KEPT_FILE}.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    }
}

/// Writes `bytes` to `path` readable by the owner only, atomically (a temporary file, synced, then
/// renamed over it, and the directory synced), so that a crash leaves the old or the new content.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{}.tmp", name.unwrap_or_default()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}
