//! Who a client is: JWT verification at the namespace CONNECT, and which rooms the token lets
//! it join.

use std::{collections::HashSet, path::PathBuf, sync::Arc};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

/// Rooms whose names start with this belong to one user each; only the gateway puts a socket
/// in one (its own), so backends can target a user's sockets.
pub(crate) const USER_ROOM_PREFIX: &str = "user:";

/// The room of a user's sockets.
pub(crate) fn user_room(user: &str) -> String {
    format!("{USER_ROOM_PREFIX}{user}")
}

/// A public key loaded at start-up: PEM RSA (RS256) or EC P-256 (ES256).
#[derive(Clone)]
pub struct PublicKey {
    path: PathBuf,
    key: DecodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("path", &self.path)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl PublicKey {
    /// Reads a PEM public key; the key type decides the one algorithm tokens may use.
    pub fn load(path: &str) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let (key, algorithm) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            (key, Algorithm::RS256)
        } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            (key, Algorithm::ES256)
        } else {
            return Err(format!("{path} is not a PEM RSA or EC (P-256) public key"));
        };
        Ok(Self {
            path: path.into(),
            key,
            algorithm,
        })
    }
}

/// A shared secret, kept out of logs.
#[derive(Clone)]
pub struct Secret(pub(crate) Arc<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // HS256 with a short secret is brute-forceable offline from any token.
        if s.len() < 32 {
            return Err("must be at least 32 bytes".into());
        }
        Ok(Self(s.into()))
    }
}

/// Why a token was refused; the client's `connect_error` shows [`AuthError::message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("invalid signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("missing claim {0}")]
    MissingClaim(String),
    #[error("invalid claim {0}")]
    InvalidClaim(String),
}

impl AuthError {
    pub(crate) fn message(&self) -> String {
        format!("unauthorized: {self}")
    }
}

/// The identity a verified token gives a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The token's `sub`.
    pub(crate) user: Arc<str>,
    pub(crate) rooms: RoomPolicy,
}

/// The rooms a socket may join, from the token's `rooms` claim: exact names, and prefixes
/// written `prefix*` (`chat:*`; `*` alone allows every room). (Without authentication there is
/// no identity and any room may be joined.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomPolicy(Arc<[Box<str>]>);

impl RoomPolicy {
    pub(crate) fn allows(&self, room: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => **p == *room,
        })
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
}

/// Verifies tokens with the one key and algorithm configured.
pub(crate) struct Authenticator {
    key: DecodingKey,
    algorithm: Algorithm,
    strict: Validation,
    /// Same checks without `exp`/`nbf`: a recovering client whose token expired while it was
    /// away keeps its session when middlewares are skipped on recovery (identity still checked).
    lenient: Validation,
}

/// Authentication settings, as the command line gives them.
pub(crate) struct AuthSettings<'a> {
    pub(crate) secret: Option<&'a Secret>,
    pub(crate) public_key: Option<&'a PublicKey>,
    pub(crate) issuer: Option<&'a str>,
    pub(crate) audience: Option<&'a str>,
    pub(crate) leeway_seconds: u64,
}

impl Authenticator {
    /// `None` when neither a secret nor a public key is configured (authentication off).
    pub(crate) fn new(settings: AuthSettings<'_>) -> Option<Self> {
        let (key, algorithm) = match (settings.secret, settings.public_key) {
            (Some(secret), _) => (
                DecodingKey::from_secret(secret.0.as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(pk)) => (pk.key.clone(), pk.algorithm),
            (None, None) => return None,
        };
        let mut strict = Validation::new(algorithm);
        strict.leeway = settings.leeway_seconds;
        strict.validate_nbf = true;
        strict.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = settings.issuer {
            strict.set_issuer(&[issuer]);
        }
        if let Some(audience) = settings.audience {
            strict.set_audience(&[audience]);
        } else {
            strict.validate_aud = false;
        }
        let mut lenient = strict.clone();
        lenient.validate_exp = false;
        lenient.validate_nbf = false;
        Some(Self {
            key,
            algorithm,
            strict,
            lenient,
        })
    }

    /// Verifies `token`; with `allow_expired`, time claims are not checked.
    pub(crate) fn verify(
        &self,
        token: Option<&str>,
        allow_expired: bool,
    ) -> Result<Identity, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        // Checked before the library sees the token, so `alg: none`, an unknown algorithm and
        // algorithm confusion (HS256 signed with our RSA public key) get one clear answer.
        let header = token.split('.').next().ok_or(AuthError::Malformed)?;
        let header: RawHeader = URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(AuthError::Malformed)?;
        if header.alg.as_deref() != Some(algorithm_name(self.algorithm)) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let validation = if allow_expired {
            &self.lenient
        } else {
            &self.strict
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, validation).map_err(|e| {
                match e.into_kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        AuthError::AlgorithmNotAllowed
                    }
                    ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
                    ErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim(claim),
                    _ => AuthError::Malformed,
                }
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(AuthError::InvalidClaim("sub".into()));
        }
        let rooms = claims.rooms.unwrap_or_default();
        let patterns: HashSet<Box<str>> = rooms.into_iter().map(Into::into).collect();
        Ok(Identity {
            user: claims.sub.into(),
            rooms: RoomPolicy(patterns.into_iter().collect()),
        })
    }
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // Only the three above are ever configured.
        _ => "",
    }
}

/// The token a client presents: `auth.token` in its CONNECT payload, else the handshake's
/// `Authorization: Bearer` header.
pub(crate) fn presented_token<'a>(
    auth: &'a serde_json::Value,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    auth.get("token").and_then(|t| t.as_str()).or_else(|| {
        authorization.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .map(str::trim)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

    fn authenticator(issuer: Option<&str>, audience: Option<&str>) -> Authenticator {
        let secret: Secret = SECRET.parse().expect("long enough");
        Authenticator::new(AuthSettings {
            secret: Some(&secret),
            public_key: None,
            issuer,
            audience,
            leeway_seconds: 5,
        })
        .expect("auth on")
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(0)
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encodes")
    }

    #[test]
    fn a_valid_token_gives_its_identity() {
        let t = token(json!({"sub": "alice", "exp": now() + 60, "rooms": ["chat:*", "lobby"]}));
        let id = authenticator(None, None)
            .verify(Some(&t), false)
            .expect("valid");
        assert_eq!(&*id.user, "alice");
        assert!(id.rooms.allows("chat:42"));
        assert!(id.rooms.allows("lobby"));
        assert!(!id.rooms.allows("lobby2"));
        assert!(!id.rooms.allows("admin"));
    }

    #[test]
    fn refusals_say_why() {
        let a = authenticator(Some("issuer-a"), Some("aud-a"));
        let ok = json!({"sub": "u", "exp": now() + 60, "iss": "issuer-a", "aud": "aud-a"});
        let with = |patch: serde_json::Value| {
            let mut c = ok.clone();
            for (k, v) in patch.as_object().expect("object") {
                c[k] = v.clone();
            }
            token(c)
        };
        assert!(a.verify(Some(&token(ok.clone())), false).is_ok());
        assert_eq!(a.verify(None, false), Err(AuthError::Missing));
        assert_eq!(a.verify(Some("garbage"), false), Err(AuthError::Malformed));
        assert_eq!(
            a.verify(Some(&with(json!({"exp": now() - 60}))), false),
            Err(AuthError::Expired)
        );
        assert!(
            a.verify(Some(&with(json!({"exp": now() - 60}))), true)
                .is_ok(),
            "expiry is not checked for a recovery that skips middlewares"
        );
        assert_eq!(
            a.verify(Some(&with(json!({"nbf": now() + 600}))), false),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            a.verify(Some(&with(json!({"iss": "other"}))), false),
            Err(AuthError::WrongIssuer)
        );
        assert_eq!(
            a.verify(Some(&with(json!({"aud": "other"}))), false),
            Err(AuthError::WrongAudience)
        );
        let mut bad_sig = token(ok.clone());
        bad_sig.push('x');
        assert_eq!(
            a.verify(Some(&bad_sig), false),
            Err(AuthError::BadSignature)
        );
        let no_exp = token(json!({"sub": "u", "iss": "issuer-a", "aud": "aud-a"}));
        assert_eq!(
            a.verify(Some(&no_exp), false),
            Err(AuthError::MissingClaim("exp".into()))
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"u","exp":{}}}"#, now() + 60));
        let t = format!("{header}.{claims}.");
        assert_eq!(
            authenticator(None, None).verify(Some(&t), false),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn the_token_comes_from_the_payload_or_the_bearer_header() {
        let auth = json!({"token": "from-payload"});
        assert_eq!(
            presented_token(&auth, Some("Bearer h")),
            Some("from-payload")
        );
        assert_eq!(presented_token(&json!({}), Some("Bearer h")), Some("h"));
        assert_eq!(presented_token(&json!(null), Some("Basic x")), None);
    }

    #[test]
    fn room_patterns() {
        let p = RoomPolicy(vec!["*".into()].into());
        assert!(p.allows("anything"));
        let none = RoomPolicy(Vec::new().into());
        assert!(!none.allows("x"));
    }
}
