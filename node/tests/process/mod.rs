//! Running `meshpay` as a process, for the tests that drive nodes as a
//! person would (`mod process;` in each).

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `meshpay` binary of this build.
pub fn meshpay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshpay"))
}

/// Runs `meshpay args`; panics with its stderr unless it succeeds; its
/// stdout.
pub fn run(args: &[&str]) -> String {
    let out = meshpay().args(args).output().expect("meshpay runs");
    assert!(
        out.status.success(),
        "meshpay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs `meshpay args` and reads its stdout as JSON.
pub fn json(args: &[&str]) -> Value {
    serde_json::from_str(&run(args)).expect("JSON")
}

/// Kills the node processes when the test ends, pass or fail.
pub struct Nodes(pub Vec<Child>);

impl Nodes {
    /// Starts `meshpay args` with its log (stderr, `meshpay_node=info`)
    /// in `log`.
    pub fn spawn(&mut self, args: &[String], log: &Path) {
        let log = std::fs::File::create(log).expect("log");
        self.0.push(
            meshpay()
                .args(args)
                .env("RUST_LOG", "meshpay_node=info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn"),
        );
    }

    /// Kills process `index` (SIGKILL) and reaps it.
    pub fn kill(&mut self, index: usize) {
        let _ = self.0[index].kill();
        let _ = self.0[index].wait();
    }
}

/// `meshpay status --json` of the node in `dir`.
pub fn status(dir: &str) -> Value {
    json(&["status", "--json", "--data-dir", dir])
}

/// The trimmed content of `path` once a process has written it (30 s at
/// most).
pub fn wait_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits up to 20 s for the node of `dir` to answer `status` with a
/// listening address; its status. `log`, if the node writes one, is shown
/// when it does not start.
pub fn await_status(dir: &Path, log: Option<&Path>) -> Value {
    let d = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if dir.join("control.addr").exists() {
            let out = meshpay()
                .args(["status", "--json", "--data-dir", &d])
                .output()
                .expect("status");
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).expect("json");
                if v["listening"].as_array().is_some_and(|l| !l.is_empty()) {
                    return v;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "node in {d} did not start: {}",
            log.and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An issuer (its key file and public key) and nodes `names` initialised
/// under `root` for it, without mDNS: `(issuer key file, issuer, dirs)`.
pub fn setup(root: &Path, names: &[&str]) -> (PathBuf, String, Vec<PathBuf>) {
    let issuer_key = root.join("issuer.key");
    let issuer = run(&["issuer", "new", "--out", &issuer_key.display().to_string()]);
    let dirs: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
    for d in &dirs {
        run(&[
            "init",
            "--data-dir",
            &d.display().to_string(),
            "--issuer",
            issuer.trim(),
            "--no-mdns",
        ]);
    }
    (issuer_key, issuer.trim().to_string(), dirs)
}

/// An allowance the issuer signs for `wallet` (100.00 unless `extra`
/// says otherwise, e.g. `["--amount", "10000.00"]`), as `allowance add`
/// takes it.
pub fn signed_allowance(issuer_key: &Path, wallet: &Value, extra: &[&str]) -> String {
    let key = issuer_key.display().to_string();
    let mut args = vec![
        "issuer",
        "allowance",
        "--key",
        &key,
        "--wallet",
        wallet.as_str().expect("wallet"),
    ];
    if !extra.contains(&"--amount") {
        args.extend(["--amount", "100.00"]);
    }
    args.extend(extra);
    run(&args).trim().to_string()
}

/// Signs an allowance of 100.00 for `wallet` and adds it to the node in
/// `dir`.
pub fn give_allowance(issuer_key: &Path, dir: &str, wallet: &Value) {
    let allowance = signed_allowance(issuer_key, wallet, &[]);
    run(&["allowance", "add", "--data-dir", dir, &allowance]);
}
