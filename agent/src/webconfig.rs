//! `--web.config.file`: TLS and basic authentication for the HTTP endpoint,
//! configured like the Prometheus exporter-toolkit's web configuration
//! file, so the same file (and the same Prometheus scrape settings) work:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative paths: to this file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional
//!   client_ca_file: ca.crt
//!   min_version: TLS13           # optional: TLS12 (default) or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...       # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! Keys this agent does not implement are refused with a clear error
//! rather than silently ignored.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
}

/// The parsed configuration.
#[derive(Clone)]
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Option<Arc<BasicAuth>>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.auth.is_some())
            .finish()
    }
}

impl WebConfig {
    /// No TLS, no authentication.
    pub fn none() -> Self {
        Self {
            tls: None,
            auth: None,
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read the web config file {}", path.display()))?;
        let file: File = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{}: not a valid web config", path.display()))?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let tls = file
            .tls_server_config
            .map(|t| tls_config(&t, dir).map(Arc::new))
            .transpose()
            .with_context(|| format!("{}: tls_server_config", path.display()))?;
        let auth = if file.basic_auth_users.is_empty() {
            None
        } else {
            for (user, hash) in &file.basic_auth_users {
                if !hash.starts_with("$2") {
                    bail!(
                        "{}: basic_auth_users.{user} is not a bcrypt hash (make one with \
                         `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
                        path.display()
                    );
                }
            }
            Some(Arc::new(BasicAuth {
                users: file.basic_auth_users,
                verified: Mutex::new(HashMap::new()),
            }))
        };
        Ok(Self { tls, auth })
    }
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn tls_config(t: &TlsFile, dir: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(v) => bail!("min_version {v:?} is not supported (TLS12 or TLS13)"),
    };
    let certs = {
        let path = resolve(dir, &t.cert_file);
        let pem = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: bad PEM certificate", path.display()))?
    };
    if certs.is_empty() {
        bail!("cert_file has no certificate");
    }
    let key = {
        let path = resolve(dir, &t.key_file);
        let pem = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .with_context(|| format!("{}: bad PEM key", path.display()))?
            .with_context(|| format!("{}: no private key", path.display()))?
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS versions")?;
    let builder = match t.client_auth_type.as_deref() {
        None | Some("NoClientCert") => builder.with_no_client_auth(),
        Some("RequireAndVerifyClientCert") => {
            let ca = t
                .client_ca_file
                .as_ref()
                .context("client_auth_type RequireAndVerifyClientCert needs client_ca_file")?;
            let path = resolve(dir, ca);
            let pem = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(c.context("bad CA certificate")?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        Some(other) => bail!(
            "client_auth_type {other:?} is not supported (NoClientCert or RequireAndVerifyClientCert)"
        ),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Users and their bcrypt hashes. bcrypt is deliberately slow (tens of ms):
/// credentials that verified once are remembered (a bounded cache, like
/// exporter-toolkit's), so scrapes do not pay it every time.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashMap<String, bool>>,
}

/// Entries of the verification cache; past it, the cache starts over.
const CACHE_ENTRIES: usize = 256;

impl BasicAuth {
    /// Whether an `Authorization` header value carries valid credentials.
    pub fn check(&self, header: Option<&str>) -> bool {
        let Some(header) = header else { return false };
        if let Some(&ok) = self.verified.lock().expect("auth cache").get(header) {
            return ok;
        }
        let ok = self.verify(header);
        let mut cache = self.verified.lock().expect("auth cache");
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(header.to_string(), ok);
        ok
    }

    fn verify(&self, header: &str) -> bool {
        use base64::Engine as _;
        let Some(encoded) = header.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        self.users
            .get(user)
            .is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("forkwatch-webconfig-{name}-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn basic_auth_checks_bcrypt_and_caches() {
        let dir = tmpdir("auth");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let p = write(
            &dir,
            "web.yml",
            &format!("basic_auth_users:\n  prom: '{hash}'\n"),
        );
        let cfg = WebConfig::load(&p).unwrap();
        let auth = cfg.auth.unwrap();
        use base64::Engine as _;
        let header = |u: &str, pw: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"))
            )
        };
        assert!(auth.check(Some(&header("prom", "s3cret"))));
        assert!(auth.check(Some(&header("prom", "s3cret"))), "cached");
        assert!(!auth.check(Some(&header("prom", "wrong"))));
        assert!(!auth.check(Some(&header("nobody", "s3cret"))));
        assert!(!auth.check(Some("Bearer x")));
        assert!(!auth.check(None));
        assert!(cfg.tls.is_none());
        fs::remove_dir_all(dir).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the file holds: a config or an error, never a panic.
        #[test]
        fn hostile_web_configs_do_not_panic(text in "\\PC{0,200}", key in "[a-z_]{1,20}", value in "\\PC{0,40}") {
            let dir = tmpdir("prop");
            let p = write(&dir, "w.yml", &text);
            let _ = WebConfig::load(&p);
            let p = write(&dir, "w.yml", &format!("tls_server_config:\n  {key}: {value:?}\nbasic_auth_users:\n  {key}: {value:?}\n"));
            let _ = WebConfig::load(&p);
        }
    }

    #[test]
    fn mistakes_are_clear_errors() {
        let dir = tmpdir("bad");
        let p = write(&dir, "a.yml", "basic_auth_users:\n  prom: plaintext\n");
        assert!(
            WebConfig::load(&p)
                .unwrap_err()
                .to_string()
                .contains("not a bcrypt hash")
        );
        let p = write(
            &dir,
            "b.yml",
            "tls_server_config:\n  cert_file: x\n  key_file: y\n  cipher_suites: [a]\n",
        );
        assert!(format!("{:#}", WebConfig::load(&p).unwrap_err()).contains("cipher_suites"));
        let p = write(
            &dir,
            "c.yml",
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
        );
        assert!(format!("{:#}", WebConfig::load(&p).unwrap_err()).contains("missing.crt"));
        assert!(WebConfig::load(&dir.join("nope.yml")).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
