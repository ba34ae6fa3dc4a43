//! The dashboard's login through the authorization code flow with PKCE (filled in below).
