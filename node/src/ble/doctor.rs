//! `meshpay ble doctor`: what this machine needs for BLE and what it
//! lacks, in plain words, without touching D-Bus until the system bus and
//! BlueZ are known to be there (so a missing piece is a sentence, not a
//! D-Bus stack trace).
//!
//! The checks read the file system only (`/run/dbus`, `/proc`,
//! `/sys/class/bluetooth`, `/sys/class/rfkill`, `/etc/group`), under a
//! root that tests can point elsewhere.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Missing or broken: BLE cannot work.
    Fail,
    /// Not checked (an earlier check failed, or it does not apply).
    Skipped,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

/// All checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// In order.
    pub checks: Vec<Check>,
    /// Whether every check passed.
    pub ready: bool,
}

impl Report {
    /// The first failure in plain words (what `node run --ble` says), or
    /// `None` when ready.
    pub fn explain(&self) -> Option<String> {
        let c = self.checks.iter().find(|c| c.status == Status::Fail)?;
        Some(match &c.fix {
            Some(fix) => {
                let mut chars = fix.chars();
                let first = chars.next().map(|f| f.to_uppercase().collect::<String>());
                format!(
                    "{}. {}{}",
                    c.detail,
                    first.unwrap_or_default(),
                    chars.as_str()
                )
            }
            None => c.detail.clone(),
        })
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::from("meshpay ble doctor\n");
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Fail => "FAIL",
                Status::Skipped => "skip",
            };
            out.push_str(&format!("  [{tag}] {}: {}\n", c.name, c.detail));
            if let (Status::Fail, Some(fix)) = (c.status, &c.fix) {
                out.push_str(&format!("         fix: {fix}\n"));
            }
        }
        match self.explain() {
            None => out.push_str("ready for BLE\n"),
            Some(_) => out.push_str("not ready for BLE (see the first FAIL above)\n"),
        }
        out
    }
}

/// Where the checks look.
#[derive(Debug, Clone)]
pub struct Environment {
    /// File-system root (`/` on a real machine).
    pub root: PathBuf,
    /// `DBUS_SYSTEM_BUS_ADDRESS`, if set.
    pub bus_address: Option<String>,
    /// Whether this binary has the `ble` feature.
    pub built_with_ble: bool,
}

impl Environment {
    /// This machine.
    pub fn system() -> Self {
        Environment {
            root: PathBuf::from("/"),
            bus_address: std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok(),
            built_with_ble: cfg!(feature = "ble"),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// The system bus socket's path.
    fn bus_socket(&self) -> PathBuf {
        let from_env = self.bus_address.as_deref().and_then(|a| {
            a.split(';')
                .find_map(|part| part.strip_prefix("unix:path="))
                .map(|p| p.split(',').next().unwrap_or(p).to_string())
        });
        match from_env {
            Some(p) => self.path(&p),
            None => self.path("/run/dbus/system_bus_socket"),
        }
    }
}

/// How to build a binary with BLE.
pub const REBUILD_HINT: &str = "rebuild with `cargo build --release -p meshpay-node --features ble` (on Debian or Ubuntu first `sudo apt-get install libdbus-1-dev pkg-config`)";

fn check(name: &'static str, ok: bool, detail: String, fix: &str) -> Check {
    Check {
        name,
        status: if ok { Status::Ok } else { Status::Fail },
        detail,
        fix: (!ok).then(|| fix.to_string()),
    }
}

fn skipped(name: &'static str, why: &str) -> Check {
    Check {
        name,
        status: Status::Skipped,
        detail: why.to_string(),
        fix: None,
    }
}

fn bluetoothd_running(env: &Environment) -> bool {
    let Ok(entries) = std::fs::read_dir(env.path("/proc")) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
            && std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim() == "bluetoothd")
    })
}

fn adapters(env: &Environment) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.path("/sys/class/bluetooth"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hci") && !n.contains(':'))
        .collect();
    names.sort();
    names
}

/// rfkill switches of type bluetooth that are blocked: `(name, how)`.
fn blocked(env: &Environment) -> Vec<(String, &'static str)> {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    std::fs::read_dir(env.path("/sys/class/rfkill"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| read(&e.path().join("type")).trim() == "bluetooth")
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if read(&e.path().join("hard")).trim() == "1" {
                Some((name, "hard (a switch or key on the machine)"))
            } else if read(&e.path().join("soft")).trim() == "1" {
                Some((name, "soft"))
            } else {
                None
            }
        })
        .collect()
}

/// Whether this process may use BlueZ: root, or a member of the
/// `bluetooth` group (BlueZ's D-Bus policy on Debian and Ubuntu).
fn permitted(env: &Environment) -> (bool, String) {
    let status = std::fs::read_to_string(env.path("/proc/self/status")).unwrap_or_default();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    if field("Uid:").get(1) == Some(&0) {
        return (true, "running as root".into());
    }
    let groups = field("Groups:");
    let group = std::fs::read_to_string(env.path("/etc/group")).unwrap_or_default();
    let bluetooth_gid = group.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some("bluetooth"))
            .then(|| f.nth(1).and_then(|g| g.parse::<u32>().ok()))
            .flatten()
    });
    match bluetooth_gid {
        Some(gid) if groups.contains(&gid) => (true, "member of the bluetooth group".into()),
        Some(_) => (
            false,
            "this user is neither root nor in the bluetooth group, so BlueZ will refuse to advertise or serve GATT".into(),
        ),
        None => (
            false,
            "there is no bluetooth group on this machine (BlueZ is not installed?) and this user is not root".into(),
        ),
    }
}

/// Runs every file-system check.
pub fn diagnose(env: &Environment) -> Report {
    let mut checks = vec![check(
        "BLE support in this binary",
        env.built_with_ble,
        if env.built_with_ble {
            "built with the `ble` feature".into()
        } else {
            "this meshpay was built without BLE support".into()
        },
        REBUILD_HINT,
    )];
    let socket = env.bus_socket();
    let bus = socket.exists();
    checks.push(check(
        "system D-Bus",
        bus,
        if bus {
            format!("system bus at {}", socket.display())
        } else {
            format!(
                "BlueZ is not running / no system bus at {}: meshpay talks to Bluetooth through BlueZ over the system D-Bus",
                socket.display()
            )
        },
        "start D-Bus and BlueZ (`sudo systemctl start dbus bluetooth`); in a container, mount the host's /run/dbus",
    ));
    let bluez = bluetoothd_running(env);
    checks.push(check(
        "BlueZ (bluetoothd)",
        bluez,
        if bluez {
            "bluetoothd is running".into()
        } else {
            "bluetoothd, the BlueZ daemon, is not running".into()
        },
        "install and start it: `sudo apt-get install bluez && sudo systemctl enable --now bluetooth`",
    ));
    let hcis = adapters(env);
    checks.push(check(
        "Bluetooth adapter",
        !hcis.is_empty(),
        if hcis.is_empty() {
            "no Bluetooth adapter: /sys/class/bluetooth lists none".into()
        } else {
            format!("adapter(s): {}", hcis.join(", "))
        },
        "enable the built-in one in the firmware settings, or plug in a USB Bluetooth 4.0+ dongle; `dmesg | grep -i bluetooth` shows what the kernel found",
    ));
    if hcis.is_empty() {
        checks.push(skipped("radio not blocked", "no adapter"));
    } else {
        let b = blocked(env);
        checks.push(check(
            "radio not blocked",
            b.is_empty(),
            if b.is_empty() {
                "no rfkill block".into()
            } else {
                let list: Vec<String> = b.iter().map(|(n, how)| format!("{n}: {how}")).collect();
                format!(
                    "the Bluetooth radio is switched off by rfkill ({})",
                    list.join(", ")
                )
            },
            "`sudo rfkill unblock bluetooth` (a hard block needs the machine's own switch)",
        ));
    }
    let (ok, detail) = permitted(env);
    checks.push(check(
        "permission",
        ok,
        detail,
        "`sudo usermod -aG bluetooth $USER`, then log out and in again (or run as root)",
    ));
    let ready = checks.iter().all(|c| c.status != Status::Fail);
    Report { checks, ready }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, p: &str, text: &str) {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().expect("in a test")).expect("in a test");
        std::fs::write(p, text).expect("in a test");
    }

    fn env(root: &Path, ble: bool) -> Environment {
        Environment {
            root: root.to_path_buf(),
            bus_address: None,
            built_with_ble: ble,
        }
    }

    #[test]
    fn a_machine_without_bluetooth_is_explained_in_plain_words() {
        let root = tempfile::tempdir().expect("temp dir");
        let r = diagnose(&env(root.path(), true));
        assert!(!r.ready);
        let why = r.explain().expect("a failure to explain");
        assert!(
            why.starts_with("BlueZ is not running / no system bus at"),
            "{why}"
        );
        assert!(
            why.contains(". Start D-Bus and BlueZ (`sudo systemctl start dbus bluetooth`)"),
            "{why}"
        );
        let text = r.render();
        assert!(
            text.contains("[FAIL] Bluetooth adapter: no Bluetooth adapter"),
            "{text}"
        );
        assert!(text.contains("not ready for BLE"));
    }

    #[test]
    fn a_build_without_the_feature_says_how_to_get_it() {
        let root = tempfile::tempdir().expect("temp dir");
        let why = diagnose(&env(root.path(), false))
            .explain()
            .expect("a failure to explain");
        assert!(why.contains("built without BLE support"), "{why}");
        assert!(why.contains("--features ble"), "{why}");
    }

    #[test]
    fn a_ready_machine_passes_and_rfkill_is_caught() {
        let root = tempfile::tempdir().expect("temp dir");
        let r = root.path();
        write(r, "run/dbus/system_bus_socket", "");
        write(r, "proc/812/comm", "bluetoothd\n");
        write(
            r,
            "proc/self/status",
            "Uid:\t1000\t1000\t1000\t1000\nGroups:\t27 112\n",
        );
        write(r, "etc/group", "sudo:x:27:me\nbluetooth:x:112:me\n");
        std::fs::create_dir_all(r.join("sys/class/bluetooth/hci0")).expect("in a test");
        write(r, "sys/class/rfkill/rfkill0/type", "bluetooth\n");
        write(r, "sys/class/rfkill/rfkill0/soft", "0\n");
        write(r, "sys/class/rfkill/rfkill0/hard", "0\n");
        let report = diagnose(&env(r, true));
        assert!(report.ready, "{}", report.render());
        assert_eq!(report.explain(), None);
        write(r, "sys/class/rfkill/rfkill0/soft", "1\n");
        let why = diagnose(&env(r, true))
            .explain()
            .expect("a failure to explain");
        assert!(why.contains("rfkill unblock bluetooth"), "{why}");
        write(r, "sys/class/rfkill/rfkill0/soft", "0\n");
        write(
            r,
            "proc/self/status",
            "Uid:\t1000\t1000\t1000\t1000\nGroups:\t27\n",
        );
        let why = diagnose(&env(r, true))
            .explain()
            .expect("a failure to explain");
        assert!(why.contains("usermod -aG bluetooth"), "{why}");
    }

    #[test]
    fn the_bus_address_from_the_environment_is_used() {
        let root = tempfile::tempdir().expect("temp dir");
        let mut e = env(root.path(), true);
        e.bus_address = Some("unix:path=/tmp/bus,guid=1".into());
        assert_eq!(e.bus_socket(), root.path().join("tmp/bus"));
    }
}
