//! `[vm]`: how this node runs guests. Every key has a default, so an empty table (or none) works on
//! a Debian machine with `qemu-system-x86` and `ovmf` installed.
//!
//! ```toml
//! [vm]
//! qemu = "qemu-system-x86_64"        # looked up in /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
//! qemu_img = "qemu-img"              # makes disk overlays
//! machine = "q35"
//! ovmf_code = "/usr/share/OVMF/OVMF_CODE_4M.fd"
//! ovmf_vars = "/usr/share/OVMF/OVMF_VARS_4M.fd"   # copied per guest, never written
//! accel = "auto"                     # auto (KVM where it works, TCG elsewhere), kvm or tcg
//! state_dir = "/var/lib/banyan-agent" # guests live in STATE_DIR/vm/NAME/
//! start_timeout_secs = 30            # QEMU must answer QMP within this
//! ```

use super::accel::AccelChoice;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub machine: String,
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    pub accel: AccelChoice,
    /// The agent's state dir; guests are under `vm/` in it.
    pub state_dir: PathBuf,
    pub start_timeout_secs: u64,
}

impl Default for VmConfig {
    fn default() -> VmConfig {
        VmConfig {
            qemu: PathBuf::from("qemu-system-x86_64"),
            qemu_img: PathBuf::from("qemu-img"),
            machine: "q35".to_string(),
            ovmf_code: PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            ovmf_vars: PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"),
            accel: AccelChoice::Auto,
            state_dir: PathBuf::from("/var/lib/banyan-agent"),
            start_timeout_secs: 30,
        }
    }
}

impl VmConfig {
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout_secs.max(1))
    }
    /// The directory holding one directory per guest.
    pub fn guests_dir(&self) -> PathBuf {
        self.state_dir.join("vm")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        vm: VmConfig,
    }

    #[test]
    fn defaults_fill_missing_keys_and_typos_are_refused() {
        let f: File = toml::from_str("[vm]\naccel = \"tcg\"\n").unwrap();
        assert_eq!(f.vm.accel, AccelChoice::Tcg);
        assert_eq!(f.vm.machine, "q35");
        let f: File = toml::from_str("").unwrap();
        assert_eq!(f.vm, VmConfig::default());
        assert!(toml::from_str::<File>("[vm]\naccell = \"tcg\"\n").is_err());
        assert!(toml::from_str::<File>("[vm]\naccel = \"xen\"\n").is_err());
    }
}
