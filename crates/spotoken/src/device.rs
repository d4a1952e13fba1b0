//! `spotoken login --device`: the device authorization grant (RFC 8628), for
//! machines without a browser and providers that offer it (Spotify does not
//! offer it to third-party apps; many identity providers do).
//!
//! [`Tokens::begin_device_login`] asks for a user code; the caller shows it
//! with the verification URI; [`Tokens::complete_device_login`] polls the
//! token endpoint on the schedule the pure [`DevicePoll`] decides (interval,
//! `slow_down`, backoff on network errors) and stores the tokens like a
//! browser login.

use spotoken_core::device::{
    self, DeviceAuthorization, DevicePoll, Next, PollAnswer, classify_poll,
};
use spotoken_core::endpoint::Provider;
use spotoken_core::scope::Scopes;

use crate::account::LoginOutcome;
use crate::{Error, Tokens, http};

/// A device login in progress: what to show the user.
#[derive(Debug)]
pub struct DeviceLogin {
    /// The user code, the verification URI and the polling parameters.
    pub authorization: DeviceAuthorization,
    provider: Provider,
    requested: Scopes,
    received_at: i64,
}

impl DeviceLogin {
    /// The URL worth showing as a QR code: the complete URI when the provider
    /// gave one, else the plain verification URI.
    pub fn qr_url(&self) -> &url::Url {
        self.authorization
            .verification_uri_complete
            .as_ref()
            .unwrap_or(&self.authorization.verification_uri)
    }
}

impl Tokens {
    /// Asks the configured provider's device authorization endpoint for a user code.
    pub async fn begin_device_login(&self, scopes: &Scopes) -> Result<DeviceLogin, Error> {
        let provider = self.discover_provider().await?;
        let url = provider.device_authorization_url.clone().ok_or_else(|| {
            Error::Configuration(format!(
                "the provider {} has no device authorization endpoint; log in through the browser instead",
                provider.name()
            ))
        })?;
        let req = device::device_authorization_request(&url, &self.inner.client, scopes);
        let answer = http::send_form(&self.inner.http, &req).await?;
        let authorization = device::parse_device_authorization(answer.as_core())?;
        Ok(DeviceLogin {
            authorization,
            provider,
            requested: scopes.clone(),
            received_at: self.now(),
        })
    }

    /// Polls until the user approves, refuses, or the code expires; stores
    /// the tokens under `account` on approval.
    pub async fn complete_device_login(
        &self,
        account: &str,
        login: &DeviceLogin,
    ) -> Result<LoginOutcome, Error> {
        crate::account::validate_account_name(account)?;
        let mut schedule = DevicePoll::new(&login.authorization, login.received_at, account);
        let mut next = schedule.first(self.now());
        let req = device::device_token_request(
            &login.provider.token_url,
            &self.inner.client,
            &login.authorization.device_code,
        );
        loop {
            let wait = match next {
                Next::PollIn(d) => d,
                Next::Stop(e) => return Err(e),
            };
            tokio::time::sleep(wait).await;
            if let Err(e) = self.spend_token_budget().await {
                next = schedule.after(PollAnswer::Temporary(e), self.now());
                continue;
            }
            let answer = match http::send_form(&self.inner.http, &req).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(account, error = %e, "device poll failed; backing off");
                    next = schedule.after(PollAnswer::Temporary(e), self.now());
                    continue;
                }
            };
            match classify_poll(answer.as_core(), account) {
                PollAnswer::Tokens(set) => {
                    return self
                        .store_login(
                            account,
                            &login.provider,
                            set,
                            &login.requested,
                            answer.status,
                        )
                        .await;
                }
                PollAnswer::SlowDown => {
                    next = schedule.after(PollAnswer::SlowDown, self.now());
                    tracing::info!(
                        account,
                        interval_secs = schedule.interval().as_secs(),
                        "the provider asked to slow down"
                    );
                }
                other => next = schedule.after(other, self.now()),
            }
        }
    }
}
