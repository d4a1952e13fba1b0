//! # spotoken-server
//!
//! The backend-for-frontend behind `spotoken serve`: a browser gets an HttpOnly
//! session cookie and never a refresh token; `/api/*` is proxied to the Web API
//! with the bearer token injected. Built on the `spotoken` library.
