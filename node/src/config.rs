//! A node's data directory: wallet key, config, database.
//!
//! ```text
//! DIR/wallet.key    the wallet's Ed25519 seed, mode 0600: hex, or sealed
//!                   with a passphrase (see [`crate::keyfile`])
//! DIR/config.toml   issuer root key, listen addresses, peers, control address
//! DIR/node.redb     the database
//! DIR/control.addr  written by `node run`: where its control API listens
//! ```

use std::path::{Path, PathBuf};

use meshpay_proto::prelude::*;
use serde::{Deserialize, Serialize};

/// The settings in `config.toml`. Every one can be overridden on the
/// command line (and through `MESHPAY_*` environment variables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The issuer's root public key (hex): the root of trust.
    pub issuer: String,
    /// libp2p listen addresses.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Static peers to dial (multiaddrs).
    #[serde(default)]
    pub peers: Vec<String>,
    /// Discover peers on the LAN by mDNS.
    #[serde(default = "yes")]
    pub mdns: bool,
    /// Where the control API listens (loopback only).
    #[serde(default = "default_control")]
    pub control: String,
    /// Seconds between periodic syncs.
    #[serde(default = "default_sync")]
    pub sync_interval_secs: u64,
    /// The settlement service (`http://host:port`); when set this node is a
    /// gateway whenever the service answers.
    #[serde(default)]
    pub settlement: Option<String>,
}

/// Listen on every interface, TCP and QUIC, on ports the system picks.
pub fn default_listen() -> Vec<String> {
    vec![
        "/ip4/0.0.0.0/tcp/0".into(),
        "/ip4/0.0.0.0/udp/0/quic-v1".into(),
    ]
}
fn yes() -> bool {
    true
}
fn default_control() -> String {
    "127.0.0.1:0".into()
}
fn default_sync() -> u64 {
    10
}

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `config.toml` does not parse.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A key is not 64 hex digits of a valid key.
    #[error("{what}: not a valid key ({detail})")]
    Key {
        /// Which key.
        what: String,
        /// Why.
        detail: &'static str,
    },
    /// `init` would overwrite an existing wallet.
    #[error("{0} already exists: refusing to overwrite a wallet key")]
    Exists(PathBuf),
    /// The key file could not be opened or sealed.
    #[error("{path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::keyfile::KeyFileError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The files of one node.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// The wallet key file.
    pub fn key_file(&self) -> PathBuf {
        self.0.join("wallet.key")
    }
    /// The config file.
    pub fn config_file(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    /// The database.
    pub fn database(&self) -> PathBuf {
        self.0.join("node.redb")
    }
    /// Where `node run` writes its control address.
    pub fn control_file(&self) -> PathBuf {
        self.0.join("control.addr")
    }

    /// Creates the directory, a fresh wallet key (0600, sealed with
    /// `passphrase` if one is given) and the config.
    pub fn init(
        &self,
        config: &Config,
        passphrase: Option<&[u8]>,
    ) -> Result<PublicKey, ConfigError> {
        parse_public_key("issuer", &config.issuer)?;
        std::fs::create_dir_all(&self.0).map_err(io(&self.0))?;
        let key_file = self.key_file();
        if key_file.exists() {
            return Err(ConfigError::Exists(key_file));
        }
        let mut rng = crate::os_rng().map_err(|e| ConfigError::Io {
            path: key_file.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let key = SecretKey::generate(&mut rng);
        let text = match passphrase {
            None => hex::encode(key.to_seed()),
            Some(passphrase) => {
                let mut salt = [0u8; 16];
                let mut nonce = [0u8; 12];
                rand::Rng::fill_bytes(&mut rng, &mut salt);
                rand::Rng::fill_bytes(&mut rng, &mut nonce);
                crate::keyfile::seal(
                    &key.to_seed(),
                    passphrase,
                    crate::keyfile::Cost::DEFAULT,
                    salt,
                    nonce,
                )
                .map_err(|source| ConfigError::KeyFile {
                    path: key_file.clone(),
                    source,
                })?
            }
        };
        write_private(&key_file, text.as_bytes())?;
        let text = toml::to_string_pretty(config).map_err(|e| ConfigError::Parse {
            path: self.config_file(),
            message: e.to_string(),
        })?;
        std::fs::write(self.config_file(), text).map_err(io(&self.config_file()))?;
        Ok(key.public())
    }

    /// Whether the wallet key is sealed with a passphrase.
    pub fn key_is_sealed(&self) -> Result<bool, ConfigError> {
        let path = self.key_file();
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        Ok(crate::keyfile::is_sealed(&text))
    }

    /// The wallet key; `passphrase` unseals a sealed key file.
    pub fn key(&self, passphrase: Option<&[u8]>) -> Result<SecretKey, ConfigError> {
        let path = self.key_file();
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let seed = crate::keyfile::open(&text, passphrase)
            .map_err(|source| ConfigError::KeyFile { path, source })?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// The config.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let path = self.config_file();
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        parse_public_key(&format!("{}: issuer", path.display()), &config.issuer)?;
        Ok(config)
    }
}

/// Parses a hex public key, naming `what` in the error.
pub fn parse_public_key(what: &str, hex_key: &str) -> Result<PublicKey, ConfigError> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(ConfigError::Key {
            what: what.to_string(),
            detail: "expected 64 hex digits",
        })?;
    PublicKey::from_bytes(&bytes).map_err(|_| ConfigError::Key {
        what: what.to_string(),
        detail: "not a valid Ed25519 public key",
    })
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), ConfigError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}
