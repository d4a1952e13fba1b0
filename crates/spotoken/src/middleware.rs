//! A `reqwest-middleware` layer for users who bring their own reqwest client:
//! it sets `Authorization: Bearer` from [`Tokens::access_token`] on every
//! request, and on a 401 refreshes once (shared with every other request that
//! saw the same token rejected) and retries once, when the request can be
//! cloned (a streaming body cannot).
//!
//! ```no_run
//! # fn demo(tokens: spotoken::Tokens) {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(tokens.middleware("default"))
//!     .build();
//! # }
//! ```

use http::Extensions;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Request, Response, StatusCode};
use reqwest_middleware::{Middleware, Next};
use spotoken_core::secret::AccessToken;

use crate::Tokens;

/// Bearer tokens for one account, refreshed as needed.
#[derive(Debug, Clone)]
pub struct BearerMiddleware {
    tokens: Tokens,
    account: String,
}

impl Tokens {
    /// A middleware that authenticates requests as `account`.
    pub fn middleware(&self, account: &str) -> BearerMiddleware {
        BearerMiddleware {
            tokens: self.clone(),
            account: account.to_owned(),
        }
    }
}

fn authorize(req: &mut Request, token: &AccessToken) -> reqwest_middleware::Result<()> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
        reqwest_middleware::Error::middleware(crate::Error::Protocol {
            status: None,
            message: "the access token is not a valid header value".into(),
            snippet: String::new(),
        })
    })?;
    v.set_sensitive(true);
    req.headers_mut().insert(AUTHORIZATION, v);
    Ok(())
}

#[async_trait::async_trait]
impl Middleware for BearerMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        ext: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let token = self
            .tokens
            .access_token(&self.account)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let retry = req.try_clone();
        authorize(&mut req, &token)?;
        let resp = next.clone().run(req, ext).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(mut again) = retry else {
            return Ok(resp);
        };
        // None: the token was obtained moments ago; the 401 is the answer.
        let Some(fresh) = self
            .tokens
            .refresh_after_rejection(&self.account, &token)
            .await
            .map_err(reqwest_middleware::Error::middleware)?
        else {
            return Ok(resp);
        };
        authorize(&mut again, &fresh)?;
        next.run(again, ext).await
    }
}
