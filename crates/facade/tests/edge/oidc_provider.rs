//! `OidcTestProvider`: a real OpenID provider for the OIDC tests — panva's
//! `oidc-provider` run by Node from `scripts/oidc-provider` on 127.0.0.1
//! and a free port — and the browser steps of signing in through its real
//! login and consent pages.
//!
//! The provider knows the confidential client `switchboard` /
//! `switchboard-secret` (authorization code with PKCE, client credentials),
//! the service `service-a` / `service-a-secret` (client credentials only),
//! and accepts any login name: `alice` has the group `switchboard-admins`
//! and the realm role `admin`, `bob` has neither. Its access tokens are JWTs
//! for the audience `switchboard-api`. See `scripts/oidc-provider/provider.mjs`.
//!
//! Node and npm are required: a missing one fails the tests loudly, never
//! skips them.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;
use reqwest::redirect::Policy;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// How long the provider may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Marks `node_modules` as installed from one `package-lock.json`.
const STAMP_FILE: &str = "node_modules/.switchboard-stamp";

/// A running provider; killed when dropped.
pub(crate) struct OidcTestProvider {
    /// The issuer URL, `http://127.0.0.1:PORT`.
    pub(crate) issuer: String,
    http: reqwest::Client,
    // The provider exits when its stdin closes, so it cannot outlive a test
    // process that dies; `child` holds that stdin open.
    child: Child,
    _stdout: BufReader<ChildStdout>,
    _stderr: tempfile::NamedTempFile,
}

impl OidcTestProvider {
    /// Starts a provider whose client `switchboard` may redirect to
    /// `redirect_uris`; one ending in `*` allows every URI that starts with
    /// the rest (`http://127.0.0.1:*` for servers on port 0). Runs `npm ci`
    /// first when `node_modules` is missing or older than the lock file.
    pub(crate) async fn start(redirect_uris: &[&str]) -> Self {
        Self::start_with_args(redirect_uris, &[]).await
    }

    /// [`Self::start`] with more command-line options of `provider.mjs`,
    /// such as `["--access-token-alg", "ES256"]`.
    pub(crate) async fn start_with_args(redirect_uris: &[&str], args: &[&str]) -> Self {
        let dir = provider_dir();
        tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || install_once(&dir)
        })
        .await
        .expect("npm ci task");

        let stderr =
            tempfile::NamedTempFile::new().expect("a temporary file for the provider's log");
        let mut command = Command::new("node");
        command
            .current_dir(&dir)
            .arg("provider.mjs")
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("the provider's log"))
            .kill_on_drop(true);
        for uri in redirect_uris {
            command.args(["--redirect-uri", uri]);
        }
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run `node` ({e}). The OIDC tests need Node.js >= 20.19 and npm \
                 (Debian: `apt-get install nodejs npm`)."
            )
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, stdout.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            let _ = child.start_kill();
            panic!(
                "the OpenID provider did not start within {START_TIMEOUT:?}; its stderr:\n{}",
                read_log(stderr.path())
            );
        }
        let started: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the provider printed {line:?}, not JSON: {e}"));
        let issuer = started["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("no issuer in {line:?}"))
            .to_owned();

        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        Self {
            issuer,
            http,
            child,
            _stdout: stdout,
            _stderr: stderr,
        }
    }

    /// Does what a person does in a browser: opens `authorization_url`,
    /// signs in as `login` (any password) on the provider's login page,
    /// confirms on its consent page and follows the redirects. Returns the
    /// URL the provider finally sends the browser to — the authorization
    /// request's `redirect_uri` with `code` and `state` (or `error`).
    pub(crate) async fn sign_in(&self, authorization_url: &str, login: &str) -> String {
        let redirect_uri = Url::parse(authorization_url)
            .expect("an authorization URL")
            .query_pairs()
            .find(|(name, _)| name == "redirect_uri")
            .map(|(_, value)| value.into_owned())
            .expect("a redirect_uri in the authorization URL");
        // A browser of its own: the provider keeps the sign-in in cookies.
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");

        let mut url = Url::parse(authorization_url).expect("an authorization URL");
        let mut response = browser
            .get(url.clone())
            .send()
            .await
            .expect("GET authorization URL");
        for _ in 0..10 {
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or_else(|| panic!("{status} without a Location from {url}"));
                url = url.join(location).expect("a Location URL");
                if url.as_str().starts_with(&redirect_uri) {
                    return url.into();
                }
                response = browser.get(url.clone()).send().await.expect("GET redirect");
            } else if status.is_success() {
                let page = response.text().await.expect("a page");
                let form = Form::parse(&page)
                    .unwrap_or_else(|| panic!("no form on the provider's page {url}:\n{page}"));
                let mut fields = form.hidden;
                if form.has_login_field {
                    fields.push(("login".into(), login.into()));
                    fields.push(("password".into(), "any password".into()));
                }
                url = url.join(&form.action).expect("a form action URL");
                response = browser
                    .post(url.clone())
                    .form(&fields)
                    .send()
                    .await
                    .expect("POST form");
            } else {
                let body = response.text().await.unwrap_or_default();
                panic!("the provider answered {status} at {url}:\n{body}");
            }
        }
        panic!("no redirect to {redirect_uri} after 10 steps; last at {url}");
    }

    /// A JWT access token for `client_id` by the client-credentials grant,
    /// for the default resource (audience `switchboard-api`).
    pub(crate) async fn client_credentials_token(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> String {
        self.client_credentials_token_for(client_id, client_secret, None)
            .await
    }

    /// [`Self::client_credentials_token`] for resource indicator `resource`:
    /// `urn:other:api` gives audience `other-api`, `urn:test:expired` a token
    /// for `switchboard-api` that expired an hour ago.
    pub(crate) async fn client_credentials_token_for(
        &self,
        client_id: &str,
        client_secret: &str,
        resource: Option<&str>,
    ) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend(resource.map(|r| ("resource", r)));
        let response = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, Some(client_secret))
            .form(&form)
            .send()
            .await
            .expect("POST /token");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("a JSON token response");
        assert!(
            status.is_success(),
            "client_credentials for {client_id}: {status} {body}"
        );
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }
}

impl Drop for OidcTestProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `scripts/oidc-provider` of this repository.
fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/oidc-provider")
}

/// Runs `npm ci` unless `node_modules` was installed from the current lock
/// file. Serialised within this process by a mutex and across processes
/// (nextest, parallel test binaries) by a file lock.
fn install_once(dir: &Path) {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed {
        return;
    }
    let lock_path = std::env::temp_dir().join("switchboard-oidc-provider-npm-ci.lock");
    let lock = std::fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock().expect("lock for npm ci");

    let lock_file = std::fs::read(dir.join("package-lock.json"))
        .unwrap_or_else(|e| panic!("cannot read {}/package-lock.json: {e}", dir.display()));
    let mut hasher = DefaultHasher::new();
    lock_file.hash(&mut hasher);
    let stamp = format!("{:016x}", hasher.finish());
    if std::fs::read_to_string(dir.join(STAMP_FILE))
        .ok()
        .as_deref()
        != Some(stamp.as_str())
    {
        let output = std::process::Command::new("npm")
            .current_dir(dir)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `npm` ({e}). The OIDC tests need Node.js >= 20.19 and npm \
                     (Debian: `apt-get install nodejs npm`)."
                )
            });
        assert!(
            output.status.success(),
            "`npm ci` in {} failed ({}):\n{}{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        std::fs::write(dir.join(STAMP_FILE), &stamp).expect("write the npm ci stamp");
    }
    *installed = true;
    // The file lock is released when `lock` is dropped.
}

fn read_log(path: &Path) -> String {
    let mut log = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut log);
    }
    log
}

/// The one form of an interaction page of the provider.
struct Form {
    action: String,
    hidden: Vec<(String, String)>,
    has_login_field: bool,
}

impl Form {
    /// Reads the first `<form>` of `page`: its action, its hidden inputs and
    /// whether it asks for a login name. Enough HTML for the provider's own
    /// pages, not for HTML at large.
    fn parse(page: &str) -> Option<Self> {
        let start = page.find("<form")?;
        let end = start + page[start..].find("</form>")?;
        let form = &page[start..end];
        let action = attribute(&form[..form.find('>')?], "action")?;
        let mut hidden = Vec::new();
        let mut has_login_field = false;
        for input in form.split("<input").skip(1) {
            let tag = &input[..input.find('>').unwrap_or(input.len())];
            let name = attribute(tag, "name").unwrap_or_default();
            if attribute(tag, "type").as_deref() == Some("hidden") {
                hidden.push((name, attribute(tag, "value").unwrap_or_default()));
            } else if name == "login" {
                has_login_field = true;
            }
        }
        Some(Self {
            action,
            hidden,
            has_login_field,
        })
    }
}

/// The value of attribute `name="…"` in `tag`, unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let marker = format!(" {name}=\"");
    let start = tag.find(&marker)? + marker.len();
    let value = &tag[start..start + tag[start..].find('"')?];
    Some(
        value
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}
