//! Users and permissions (`-auth FILE`), checked for every request by one middleware
//! ([`authorize`]) before any handler runs, so a route cannot forget it.
//!
//! The file is a JSON list, modelled on rqlite's:
//! `[{"username":"alice","password_hash":"$argon2id$...","perms":["read","write"]},
//!   {"username":"*","perms":["read"]}]`. `password_hash` is an argon2id PHC string
//! (`hraftd hash-password`); the `*` entry, which has no hash, says what anonymous
//! clients may do. Credentials come with HTTP Basic authentication.
//!
//! - Missing credentials where anonymous clients may not: `401` + `WWW-Authenticate`.
//!   Wrong credentials: `401`. Right credentials without the permission: `403`.
//! - An unknown user costs the same as a wrong password: a dummy hash is verified.
//! - argon2 is slow on purpose, so verified credentials are cached in memory, keyed by a
//!   keyed hash (HMAC-SHA256 with a per-process random key) of user and password: the
//!   password itself is never kept. The cache is bounded and emptied on every reload.
//! - `/livez`, `/readyz` and `/openapi.json` are open; `/metrics` needs `metrics`; see
//!   [`required`] for every route.
//! - The file is re-read on SIGHUP ([`Auth::reload`]); one that does not parse is refused
//!   with its line and reason, and the users already in force stay.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;

use actix_web::body::BoxBody;
use actix_web::body::MessageBody;
use actix_web::dev::ServiceRequest;
use actix_web::dev::ServiceResponse;
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;
use argon2::password_hash::PasswordHash;
use argon2::password_hash::PasswordVerifier;
use argon2::Argon2;
use base64::Engine;
use hmac::Mac;
use serde::Deserialize;

use crate::error::ApiError;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Perm {
    /// Read keys (`GET /key...`) and `/status`.
    Read,
    /// Write and delete keys.
    Write,
    /// Cluster operations: `/join`, `/remove`, `/backup`.
    Admin,
    /// `GET /metrics`.
    Metrics,
}

/// The permission a request needs, by route pattern and method; `None`: open to all.
pub fn required(pattern: &str, method: &Method) -> Option<Perm> {
    match pattern {
        "/livez" | "/readyz" | "/openapi.json" => None,
        "/metrics" => Some(Perm::Metrics),
        "/join" | "/remove" | "/backup" | "/groups/{group}/backup" => Some(Perm::Admin),
        "/key" | "/key/{key:.*}" | "/groups/{group}/key" | "/groups/{group}/key/{key:.*}" => {
            Some(if *method == Method::GET || *method == Method::HEAD {
                Perm::Read
            } else {
                Perm::Write
            })
        }
        "/groups"
        | "/groups/{group}"
        | "/groups/{group}/members"
        | "/groups/{group}/members/{id}"
        | "/groups/{group}/leader" => Some(if *method == Method::GET || *method == Method::HEAD {
            Perm::Read
        } else {
            Perm::Admin
        }),
        "/status" | "/groups/{group}/status" => Some(Perm::Read),
        "/watch" | "/groups/{group}/watch" => Some(Perm::Read),
        "/lease"
        | "/lease/{id}"
        | "/lease/{id}/keepalive"
        | "/groups/{group}/lease"
        | "/groups/{group}/lease/{id}"
        | "/groups/{group}/lease/{id}/keepalive" => {
            Some(if *method == Method::GET || *method == Method::HEAD {
                Perm::Read
            } else {
                Perm::Write
            })
        }
        // A transaction may write, whatever its branches hold.
        "/txn" | "/groups/{group}/txn" => Some(Perm::Write),
        // Unknown paths answer 404 whoever asks; they reveal nothing.
        _ => None,
    }
}

/// Verified credentials kept at most; past this the cache is emptied and refilled.
const CACHE_ENTRIES: usize = 4096;
/// Longest accepted `Authorization` header value, in bytes.
const MAX_AUTH_HEADER: usize = 4096;

/// An argon2id PHC string of `password` with hraftd's parameters (argon2's defaults:
/// m=19456 KiB, t=2, p=1) and a random salt: what `hraftd hash-password` prints.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::rand_core::OsRng;
    use argon2::password_hash::PasswordHasher;
    use argon2::password_hash::SaltString;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    username: String,
    #[serde(default)]
    password_hash: Option<String>,
    perms: Vec<Perm>,
}

/// One user: the PHC hash and what they may do.
#[derive(Debug, Clone)]
struct User {
    hash: String,
    perms: BTreeSet<Perm>,
}

/// The users of one version of the file.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: HashMap<String, User>,
    anonymous: BTreeSet<Perm>,
}

impl Users {
    /// Parses the file's text; the error names the line and the reason.
    pub fn parse(text: &str) -> Result<Users, String> {
        let entries: Vec<Entry> =
            serde_json::from_str(text).map_err(|e| format!("line {}: {e}", e.line()))?;
        let mut out = Users::default();
        for (i, e) in entries.into_iter().enumerate() {
            let what = format!("entry {} ({:?})", i + 1, e.username);
            if e.username == "*" {
                if e.password_hash.is_some() {
                    return Err(format!(
                        "{what}: the anonymous entry \"*\" has no password_hash"
                    ));
                }
                out.anonymous.extend(e.perms);
                continue;
            }
            if e.username.is_empty() || e.username.contains(':') {
                return Err(format!("{what}: a username is non-empty and has no ':'"));
            }
            let Some(hash) = e.password_hash else {
                return Err(format!(
                    "{what}: password_hash is missing (hraftd hash-password)"
                ));
            };
            match PasswordHash::new(&hash) {
                Ok(h) if h.algorithm.as_str() == "argon2id" => {}
                Ok(h) => {
                    return Err(format!(
                        "{what}: password_hash uses {}, not argon2id",
                        h.algorithm
                    ))
                }
                Err(err) => {
                    return Err(format!("{what}: password_hash is not a PHC string: {err}"))
                }
            }
            if out.users.contains_key(&e.username) {
                return Err(format!("{what}: the username appears twice"));
            }
            out.users.insert(
                e.username,
                User {
                    hash,
                    perms: e.perms.into_iter().collect(),
                },
            );
        }
        Ok(out)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User(String),
}

/// The users in force, the cache of verified credentials, and where the file is.
pub struct Auth {
    path: PathBuf,
    /// Replaced whole by a reload; requests read the version in force when they start.
    users: RwLock<Arc<Users>>,
    /// Keyed hashes of verified `user:password` pairs → the user. Shared by the HTTP
    /// workers; bounded by [`CACHE_ENTRIES`]; emptied on reload.
    cache: Mutex<HashMap<[u8; 32], String>>,
    /// The per-process key of the cache's keyed hash.
    cache_key: [u8; 32],
    /// A hash of a random password nobody knows, verified for unknown users so that they
    /// take as long as a wrong password.
    dummy_hash: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Loads the file at `path` (an error names the line and the reason).
    pub fn load(path: &Path) -> Result<Auth, String> {
        let users = Users::load(path)?;
        let nobody: [u8; 16] = rand::random();
        Ok(Auth {
            path: path.to_path_buf(),
            users: RwLock::new(Arc::new(users)),
            cache: Mutex::default(),
            cache_key: rand::random(),
            dummy_hash: hash_password(&base64::engine::general_purpose::STANDARD.encode(nobody))?,
        })
    }

    /// Re-reads the file. On success the new users are in force and the cache is emptied;
    /// on error the old ones stay and the error says why.
    pub fn reload(&self) -> Result<usize, String> {
        let users = Users::load(&self.path)?;
        let n = users.len();
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(n)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn users(&self) -> Arc<Users> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn cache_key_of(&self, user: &str, password: &str) -> [u8; 32] {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.cache_key)
            .expect("HMAC takes any key length");
        mac.update(user.as_bytes());
        mac.update(b"\0");
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Checks a `user:password` pair; `Ok` with the user when it is right.
    async fn verify(&self, users: &Users, user: &str, password: &str) -> Result<String, ApiError> {
        let key = self.cache_key_of(user, password);
        if let Some(u) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(u.clone());
        }
        let hash = users.users.get(user).map(|u| u.hash.clone());
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let password = password.to_string();
        // argon2 takes tens of milliseconds of CPU: off the HTTP workers' threads.
        let ok = web::block(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .map_err(|e| ApiError::Internal(format!("verifying a password: {e}")))?;
        if !(ok && known) {
            return Err(ApiError::Unauthorized("wrong username or password".into()));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, user.to_string());
        Ok(user.to_string())
    }

    /// Who sent `authorization` (the header's value, if any).
    pub async fn identify(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<(Identity, Arc<Users>), ApiError> {
        let users = self.users();
        let Some(value) = authorization else {
            return Ok((Identity::Anonymous, users));
        };
        let bad =
            || ApiError::Unauthorized("the Authorization header must be Basic credentials".into());
        if value.len() > MAX_AUTH_HEADER {
            return Err(bad());
        }
        let value = std::str::from_utf8(value).map_err(|_| bad())?;
        let (scheme, b64) = value.trim().split_once(' ').ok_or_else(bad)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(bad());
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
        let user = self.verify(&users, user, password).await?;
        Ok((Identity::User(user), users))
    }

    /// Whether `who` may do what `perm` allows (anonymous clients get the `*` entry's).
    pub fn allows(users: &Users, who: &Identity, perm: Perm) -> bool {
        match who {
            Identity::Anonymous => users.anonymous.contains(&perm),
            Identity::User(u) => users.users.get(u).is_some_and(|u| u.perms.contains(&perm)),
        }
    }

    /// Decides one request: `Ok` to go on, else the 401 or 403 to answer.
    pub async fn check(
        &self,
        pattern: &str,
        method: &Method,
        authorization: Option<&[u8]>,
    ) -> Result<(), ApiError> {
        let Some(perm) = required(pattern, method) else {
            return Ok(());
        };
        let (who, users) = self.identify(authorization).await?;
        if Auth::allows(&users, &who, perm) {
            return Ok(());
        }
        match who {
            Identity::Anonymous => Err(ApiError::Unauthorized(format!(
                "this needs the {perm:?} permission: give a username and password"
            ))),
            Identity::User(u) => Err(ApiError::Forbidden(format!(
                "user {u:?} does not have the {perm:?} permission"
            ))),
        }
    }
}

/// The middleware: every request is checked against the users in force before any
/// handler (or a 404/405) runs. Without `-auth` everything is open, as before.
pub async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let auth = req
        .app_data::<web::Data<crate::Settings>>()
        .and_then(|s| s.auth.clone());
    let Some(auth) = auth else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let pattern = req.match_pattern().unwrap_or_default();
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    match auth.check(&pattern, req.method(), header.as_deref()).await {
        Ok(()) => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body),
        Err(e) => Ok(req.error_response(e).map_into_boxed_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_does_not_parse_names_the_line_and_the_reason() {
        let e = Users::parse("[\n {\"username\": \"a\",\n \"perms\": [\"fly\"]}\n]").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        assert!(e.contains("fly"), "{e}");
        let e = Users::parse(r#"[{"username":"a","perms":["read"]}]"#).unwrap_err();
        assert!(e.contains("password_hash is missing"), "{e}");
        let e =
            Users::parse(r#"[{"username":"a","password_hash":"plain","perms":[]}]"#).unwrap_err();
        assert!(e.contains("not a PHC string"), "{e}");
        let e = Users::parse(r#"[{"username":"*","password_hash":"x","perms":[]}]"#).unwrap_err();
        assert!(e.contains("anonymous"), "{e}");
        let hash = hash_password("pw").unwrap();
        let ok = Users::parse(&format!(
            r#"[{{"username":"a","password_hash":"{hash}","perms":["read","write"]}},
                {{"username":"*","perms":["metrics"]}}]"#
        ))
        .unwrap();
        assert_eq!(ok.len(), 1);
        assert!(ok.anonymous.contains(&Perm::Metrics));
    }

    #[test]
    fn every_registered_route_has_a_permission_or_is_open_on_purpose() {
        let src = include_str!("lib.rs");
        let body = &src[src.find("fn routes").unwrap()..src.find("pub fn app").unwrap()];
        let open = ["/livez", "/readyz", "/openapi.json"];
        let patterns: Vec<&str> = body
            .split("web::resource(\"")
            .skip(1)
            .map(|r| &r[..r.find('"').unwrap()])
            .collect();
        assert!(patterns.len() > 15, "{patterns:?}");
        for p in patterns {
            for m in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
                assert_eq!(
                    required(p, &m).is_none(),
                    open.contains(&p),
                    "{m} {p}: every route but {open:?} needs a permission"
                );
            }
        }
        assert_eq!(
            required("/groups/{group}/leader", &Method::POST),
            Some(Perm::Admin)
        );
    }

    #[test]
    fn every_route_needs_its_permission() {
        assert_eq!(required("/key/{key:.*}", &Method::GET), Some(Perm::Read));
        assert_eq!(required("/key", &Method::POST), Some(Perm::Write));
        assert_eq!(
            required("/key/{key:.*}", &Method::DELETE),
            Some(Perm::Write)
        );
        assert_eq!(required("/backup", &Method::GET), Some(Perm::Admin));
        assert_eq!(required("/groups", &Method::GET), Some(Perm::Read));
        assert_eq!(required("/groups", &Method::POST), Some(Perm::Admin));
        assert_eq!(
            required("/groups/{group}", &Method::DELETE),
            Some(Perm::Admin)
        );
        assert_eq!(
            required("/groups/{group}/members/{id}", &Method::DELETE),
            Some(Perm::Admin)
        );
        assert_eq!(
            required("/groups/{group}/key/{key:.*}", &Method::PUT),
            Some(Perm::Write)
        );
        assert_eq!(
            required("/groups/{group}/key", &Method::GET),
            Some(Perm::Read)
        );
        assert_eq!(required("/join", &Method::POST), Some(Perm::Admin));
        assert_eq!(required("/txn", &Method::POST), Some(Perm::Write));
        assert_eq!(
            required("/groups/{group}/txn", &Method::POST),
            Some(Perm::Write)
        );
        assert_eq!(required("/metrics", &Method::GET), Some(Perm::Metrics));
        assert_eq!(required("/livez", &Method::GET), None);
        assert_eq!(required("/readyz", &Method::GET), None);
    }
}
