//! Real `meshpay` processes for the integration tests: run a command and
//! read its output, spawn long-running ones that are killed when the test
//! ends (pass or fail), and wait for the files they write.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `meshpay` binary cargo built for this test.
pub fn meshpay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshpay"))
}

/// Runs `meshpay args`, which must succeed, and returns its stdout.
pub fn run(args: &[&str]) -> String {
    let out = meshpay().args(args).output().expect("meshpay runs");
    assert!(
        out.status.success(),
        "meshpay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// [`run`], its stdout parsed as JSON.
pub fn run_json(args: &[&str]) -> Value {
    serde_json::from_str(&run(args)).expect("JSON")
}

/// `meshpay status --json` of the node in `dir`.
pub fn status(dir: &str) -> Value {
    run_json(&["status", "--json", "--data-dir", dir])
}

/// Child processes, killed when the test ends.
pub struct Procs(pub Vec<Child>);

impl Procs {
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

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
