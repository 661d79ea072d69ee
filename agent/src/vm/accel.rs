//! Which accelerators and confidential-computing modes this host can give a guest, probed once.
//!
//! KVM counts only where `/dev/kvm` opens and creates a VM, and not where the host's KVM is the
//! paravirtual `kvm_pvm` (its `/dev/kvm` works, but guest kernels hang under it). SEV-SNP and TDX
//! count only where the host's KVM module says it has them enabled. Everything else is TCG.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

/// How a guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator (or `[vm] accel`) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where it works, TCG elsewhere.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    /// Reads `auto`, `kvm` or `tcg`; anything else is refused with the list of what is accepted.
    pub fn parse(s: &str) -> Result<AccelChoice, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(format!(
                "unknown accelerator '{}': use auto, kvm or tcg",
                other.escape_debug()
            )),
        }
    }
}

/// Memory encryption of a confidential guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Confidential {
    #[default]
    None,
    SevSnp,
    Tdx,
}

/// What the host offers, probed once per process ([`HostCaps::get`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCaps {
    /// `/dev/kvm` creates VMs and is not the paravirtual `kvm_pvm`.
    pub kvm: bool,
    /// Why KVM is not usable, for refusals.
    pub kvm_why_not: String,
    pub sev_snp: bool,
    pub tdx: bool,
}

impl HostCaps {
    /// This host's capabilities, probed on the first call.
    pub fn get() -> &'static HostCaps {
        static CAPS: OnceLock<HostCaps> = OnceLock::new();
        CAPS.get_or_init(|| {
            let caps = HostCaps::probe(Path::new("/"));
            tracing::info!(
                kvm = caps.kvm,
                sev_snp = caps.sev_snp,
                tdx = caps.tdx,
                why = %caps.kvm_why_not,
                "vm: host accelerators probed"
            );
            caps
        })
    }

    /// Probes the host under `root` (`/` but in tests).
    pub fn probe(root: &Path) -> HostCaps {
        let (kvm, kvm_why_not) = if root.join("sys/module/kvm_pvm").exists() {
            (
                false,
                "the host's KVM is the paravirtual kvm_pvm (/sys/module/kvm_pvm), under which guests hang"
                    .to_string(),
            )
        } else {
            match kvm_creates_vm(&root.join("dev/kvm")) {
                Ok(()) => (true, String::new()),
                Err(why) => (false, why),
            }
        };
        let yes = |p: &str| {
            std::fs::read_to_string(root.join(p))
                .map(|s| matches!(s.trim(), "Y" | "y" | "1"))
                .unwrap_or(false)
        };
        HostCaps {
            kvm,
            kvm_why_not,
            sev_snp: kvm && yes("sys/module/kvm_amd/parameters/sev_snp"),
            tdx: kvm && yes("sys/module/kvm_intel/parameters/tdx"),
        }
    }

    /// The accelerator for `choice` on this host, or why it cannot be had.
    pub fn resolve(&self, choice: AccelChoice, conf: Confidential) -> Result<Accel, String> {
        let accel = match choice {
            AccelChoice::Auto if self.kvm => Accel::Kvm,
            AccelChoice::Auto | AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Kvm if self.kvm => Accel::Kvm,
            AccelChoice::Kvm => {
                return Err(format!(
                    "KVM is not usable on this host: {}; use accel auto or tcg",
                    self.kvm_why_not
                ))
            }
        };
        match conf {
            Confidential::None => Ok(accel),
            Confidential::SevSnp if !self.sev_snp => Err(
                "this host has no SEV-SNP (needs a working KVM and /sys/module/kvm_amd/parameters/sev_snp = Y): launch without SEV-SNP or on a host that has it"
                    .to_string(),
            ),
            Confidential::Tdx if !self.tdx => Err(
                "this host has no TDX (needs a working KVM and /sys/module/kvm_intel/parameters/tdx = Y): launch without TDX or on a host that has it"
                    .to_string(),
            ),
            Confidential::SevSnp | Confidential::Tdx if accel != Accel::Kvm => Err(
                "a confidential guest needs KVM: use accel auto or kvm".to_string(),
            ),
            Confidential::SevSnp | Confidential::Tdx => Ok(accel),
        }
    }
}

// KVM_CREATE_VM is _IO(KVMIO, 0x01) with the machine type (0) as its argument; it returns a VM fd.
nix::ioctl_write_int_bad!(kvm_create_vm, nix::request_code_none!(0xAE, 0x01));

/// Whether the KVM device at `dev` opens and creates a VM (the VM is closed at once).
fn kvm_creates_vm(dev: &Path) -> Result<(), String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))?;
    // SAFETY: KVM_CREATE_VM takes an integer and returns a new fd or -1; `f` is an open fd.
    let vm = unsafe { kvm_create_vm(f.as_raw_fd(), 0) }
        .map_err(|e| format!("{} does not create VMs: {e}", dev.display()))?;
    // SAFETY: `vm` is a fresh fd that nothing else owns; dropping it closes the VM.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("banyan-accel-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (p, content) in files {
            let f = root.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, content).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn paravirtual_kvm_means_tcg_and_no_confidential_guests() {
        let root = fake_root(
            "pvm",
            &[
                ("sys/module/kvm_pvm/refcnt", "1"),
                ("sys/module/kvm_amd/parameters/sev_snp", "Y"),
            ],
        );
        let caps = HostCaps::probe(&root);
        assert!(!caps.kvm && !caps.sev_snp && !caps.tdx);
        assert_eq!(
            caps.resolve(AccelChoice::Auto, Confidential::None),
            Ok(Accel::Tcg)
        );
        let e = caps
            .resolve(AccelChoice::Kvm, Confidential::None)
            .unwrap_err();
        assert!(e.contains("kvm_pvm"), "{e}");
        let e = caps
            .resolve(AccelChoice::Auto, Confidential::SevSnp)
            .unwrap_err();
        assert!(e.contains("SEV-SNP"), "{e}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn no_kvm_device_means_tcg() {
        let root = fake_root("nodev", &[]);
        let caps = HostCaps::probe(&root);
        assert!(!caps.kvm);
        assert!(caps.kvm_why_not.contains("dev/kvm"), "{}", caps.kvm_why_not);
        assert_eq!(
            caps.resolve(AccelChoice::Tcg, Confidential::None),
            Ok(Accel::Tcg)
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn confidential_modes_need_the_host_flag_and_kvm() {
        let caps = HostCaps {
            kvm: true,
            kvm_why_not: String::new(),
            sev_snp: true,
            tdx: false,
        };
        assert_eq!(
            caps.resolve(AccelChoice::Auto, Confidential::SevSnp),
            Ok(Accel::Kvm)
        );
        assert!(caps
            .resolve(AccelChoice::Tcg, Confidential::SevSnp)
            .is_err());
        assert!(caps
            .resolve(AccelChoice::Auto, Confidential::Tdx)
            .unwrap_err()
            .contains("TDX"));
    }

    #[test]
    fn accelerator_names_are_checked() {
        assert_eq!(AccelChoice::parse("kvm"), Ok(AccelChoice::Kvm));
        let e = AccelChoice::parse("xen").unwrap_err();
        assert!(e.contains("'xen'") && e.contains("auto, kvm or tcg"), "{e}");
    }
}
