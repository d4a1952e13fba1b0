//! Secrets as types that cannot be printed.
//!
//! Every token, verifier, client secret and key that passes through spotoken lives
//! in one of these newtypes. They zeroize their memory on drop, print `[redacted]`
//! through `Debug` and `Display`, and are read only through an explicit
//! [`expose`](AccessToken::expose) call, so a secret that reaches a log line got
//! there on purpose and shows up in review.

use zeroize::Zeroizing;

macro_rules! secret_string {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(Zeroizing<String>);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(Zeroizing::new(value.into()))
            }

            /// The secret itself. Call only where the value must leave the process
            /// (an HTTP request, an encrypted store) or be shown on purpose.
            pub fn expose(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("[redacted]")
            }
        }
    };
}

secret_string!(
    /// A bearer access token (Spotify's live for an hour).
    AccessToken
);
secret_string!(
    /// A refresh token: the long-lived credential we exist to protect.
    RefreshToken
);
secret_string!(
    /// A PKCE code verifier (RFC 7636): 43–128 unreserved characters.
    CodeVerifier
);
secret_string!(
    /// A confidential client's secret.
    ClientSecret
);
secret_string!(
    /// A one-time authorization code from the redirect.
    AuthorizationCode
);
secret_string!(
    /// An RFC 8628 device code: whoever holds it gets the tokens once the user approves.
    DeviceCode
);
secret_string!(
    /// An opaque session identifier handed to a browser as a cookie value.
    SessionId
);

/// A 32-byte symmetric key (for example the store's master key).
#[derive(Clone, PartialEq, Eq)]
pub struct Key32(Zeroizing<[u8; 32]>);

impl Key32 {
    /// Wraps raw key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key bytes, for the cipher.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key32([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let t = RefreshToken::new("AQDsuperSecretValue");
        assert_eq!(format!("{t}"), "[redacted]");
        assert!(!format!("{t:?}").contains("superSecret"));
        assert!(!format!("{:?}", Key32::new([7; 32])).contains('7'));
        assert_eq!(t.expose(), "AQDsuperSecretValue");
    }
}
